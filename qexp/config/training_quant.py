"""A recipe's ``qpt`` block (quantized pre-training, Chitsaz et al. 2024) as one value object, checked before any work.

    qpt:
      during: train                 # train: quantize while pre-training | eval: PTQ of the FP-trained model with the
                                    #   same quantizers (the paper's Tables 10-11; training is the FP baseline's)
      weights:     {bits: 8, granularity: per_channel}                   # per_tensor | per_channel (output channel)
      activations: {bits: 8, granularity: per_token, symmetric: true}    # per_tensor | per_token | per_channel
      gradients:   {bits: 8, granularity: per_token}                     # per_tensor | per_token (dY of the linear)
      grad_path: weight             # which GEMM takes Q(dY): weight (paper) | input (authors' flag) | both (Fig. 10)
      saved: quantized              # backward operands: quantized (paper's formulas) | original (authors' code)
      adam: {m1: {bits: 8, granularity: per_channel}, m2: null, timing: after_update}   # per_tensor | per_channel
      sites: ["decoder.layer.*.weight"]   # weight site globs (quant.sites' dialect); lm_head left out
      exclude_sites: []

Absent components are off.  Only the pre-training kinds honour it (they train); every other kind refuses it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..quant.dynamic import FormatError, TensorFormat, make_format
from ..quant.sites import SelectorError, site_globs
from ..quant.optim import TIMINGS
from ..quant.training_linear import GRAD_PATHS, SAVED, LinearQuant

DURING = ("train", "eval")
KEYS = ("during", "weights", "activations", "gradients", "grad_path", "saved", "adam", "sites", "exclude_sites", "enabled",
        "code")
CODES = ("paper", "authors")
SCOPES = ("all", "linear_weights")
# the 2024 authors' minimum ranges (chandar-lab/EfficientLLMs configs; ../shared/research/pwq-bcq-and-quantized-
# pretraining.md): weights, activations, gradients 1e-5 (configs/quantization/base.jsonnet), per-token gradients 1e-9
# (gpt2_g8_per_token, gpt2_w8a8g8_per_token), the AdamW state quantizers 1e-8 (configs/optimizer/base_adamw.jsonnet)
AUTHORS_MIN_RANGE = {"weights": 1e-5, "activations": 1e-5, "gradients": 1e-5, "gradients_per_token": 1e-9,
                     "adam": 1e-8}


def authors_spec(spec, kind: str):
    """A format spec with the authors' floor and asymmetric grid filled in where the recipe gives none."""
    if spec is None:
        return None
    spec = dict(spec)
    if not spec.get("enabled", True):
        return spec
    floor_key = "gradients_per_token" if kind == "gradients" and spec.get("granularity") == "per_token" else kind
    spec.setdefault("min_range", AUTHORS_MIN_RANGE[floor_key])
    spec.setdefault("levels", "authors")
    return spec


class TrainingQuantConfigError(ValueError):
    pass


@dataclass(frozen=True)
class TrainingQuant:
    linear: LinearQuant
    m1: TensorFormat | None = None
    m2: TensorFormat | None = None
    timing: str = "after_update"
    during: str = "train"
    sites: tuple = ("decoder.layer.*.weight",)
    exclude_sites: tuple = field(default_factory=tuple)
    adam_scope: str = "all"       # all (qexp: every parameter's states) | linear_weights (the authors' code)
    code: str = "paper"           # paper | authors: the one switch that selects every authors' behaviour below

    @property
    def trains(self) -> bool:
        """Whether training itself is quantized (else the FP-trained model is quantized for evaluation only)."""
        return self.during == "train"

    def describe(self) -> dict:
        out = {"during": self.during, **self.linear.describe(), "sites": list(self.sites),
               "exclude_sites": list(self.exclude_sites),
               "adam": {"m1": str(self.m1) if self.m1 else None, "m2": str(self.m2) if self.m2 else None,
                        "timing": self.timing}}
        if self.code != "paper" or self.adam_scope != "all":   # absent for the paper's semantics: old keys unchanged
            out["code"], out["adam"]["scope"] = self.code, self.adam_scope
        return out


def _choice(value, valid, where):
    if value not in valid:
        raise TrainingQuantConfigError(f"{where}={value!r}; valid: {', '.join(valid)}")
    return value


def training_quant(recipe) -> TrainingQuant | None:
    """The recipe's ``qpt`` block as a :class:`TrainingQuant` (None when absent or ``enabled: false``)."""
    q = recipe.get("qpt") if recipe is not None else None
    if q is None or not q.get("enabled", True):
        return None
    q = dict(q)
    for old, new in (("include", "sites"), ("exclude", "exclude_sites")):   # issue 26 #4: one selector dialect
        if old in q:
            try:
                site_globs(None, f"recipe.qpt.{new}", f"recipe.qpt.{old}", q[old])
            except SelectorError as e:
                raise TrainingQuantConfigError(str(e)) from None
    unknown = sorted(set(q) - set(KEYS))
    if unknown:
        raise TrainingQuantConfigError(f"recipe.qpt: unknown key(s) {unknown}; valid: {', '.join(KEYS)}")
    adam = dict(q.get("adam") or {})
    bad = sorted(set(adam) - {"m1", "m2", "timing", "scope"})
    if bad:
        raise TrainingQuantConfigError(f"recipe.qpt.adam: unknown key(s) {bad}; valid: m1, m2, timing, scope")
    code = _choice(str(q.get("code", "paper")), CODES, "recipe.qpt.code")
    if code == "authors":   # issue 31: every behaviour of the authors' code, unless the recipe says otherwise
        for kind in ("weights", "activations", "gradients"):
            q[kind] = authors_spec(q.get(kind), kind)
        for m in ("m1", "m2"):
            adam[m] = authors_spec(adam.get(m), "adam")
        # the switch selects the authors' code as a whole (the shared _qpt defaults say "paper" for these); for a
        # mix, leave code=paper and set saved / adam.timing / adam.scope / a format's min_range and levels one by one
        q["saved"], adam["timing"], adam["scope"] = "original", "on_read", "linear_weights"
    scope = _choice(str(adam.get("scope", "all")), SCOPES, "recipe.qpt.adam.scope")
    try:
        linear = LinearQuant(
            weights=make_format(q.get("weights"), "recipe.qpt.weights", ("per_tensor", "per_channel"), 0),
            activations=make_format(q.get("activations"), "recipe.qpt.activations",
                                    ("per_tensor", "per_token", "per_channel"), -1),
            gradients=make_format(q.get("gradients"), "recipe.qpt.gradients", ("per_tensor", "per_token")),
            grad_path=_choice(str(q.get("grad_path", "weight")), GRAD_PATHS, "recipe.qpt.grad_path"),
            saved=_choice(str(q.get("saved", "quantized")), SAVED, "recipe.qpt.saved"))
        m1 = make_format(adam.get("m1"), "recipe.qpt.adam.m1", ("per_tensor", "per_channel"), 0)
        m2 = make_format(adam.get("m2"), "recipe.qpt.adam.m2", ("per_tensor", "per_channel"), 0)
    except FormatError as e:
        raise TrainingQuantConfigError(str(e)) from None
    during = _choice(str(q.get("during", "train")), DURING, "recipe.qpt.during")
    if during == "eval" and (linear.gradients is not None or m1 is not None or m2 is not None):
        raise TrainingQuantConfigError("recipe.qpt.during=eval quantizes a trained model for evaluation only; "
                                       "gradients and Adam states exist only in training (use during=train)")
    if not (linear.active or m1 or m2):
        raise TrainingQuantConfigError("recipe.qpt quantizes nothing: set weights, activations, gradients or "
                                       "adam.m1/m2 (or drop the qpt block)")
    try:
        sites = site_globs(q.get("sites", ["decoder.layer.*.weight"]), "recipe.qpt.sites")
        exclude = site_globs(q.get("exclude_sites", []), "recipe.qpt.exclude_sites")
    except SelectorError as e:
        raise TrainingQuantConfigError(str(e)) from None
    return TrainingQuant(linear, m1, m2, _choice(str(adam.get("timing", "after_update")), TIMINGS,
                                                 "recipe.qpt.adam.timing"),
                         during, sites, exclude, scope, code)
