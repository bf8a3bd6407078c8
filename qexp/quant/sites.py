"""Quantization sites: enumerate a model's quantizers by stable dotted name and configure them from config.

A quant config has a default spec per group of sites and an ordered list of site rules (STYLE 7)::

    weights:     {bits: 8, symmetric: true,  granularity: per_tensor, estimator: current_minmax}
    activations: {bits: 8, symmetric: false, granularity: per_tensor, estimator: current_minmax}
    inputs:      {bits: 8, symmetric: true,  granularity: per_token}      # absent = off
    sites:
      - {match: "encoder.layer.*.ffn.residual_sum", bits: 16}
      - {match: "classifier", enabled: false}

Groups: ``weights`` (``<site>.weight``), ``activations`` (the outputs of operations, Bondarenko et al. 2021's sites)
and ``inputs`` (``<linear>.input``: the input of a linear layer only, as ZeroQuant quantizes it; the residual stream
that also carries that tensor stays in floating point).  Input sites are activation quantizers (calibrated from data),
configured from their own default so that recipes written for output sites never switch them on.

Precedence: the group's default, then every glob rule that matches, in list order (later wins), then rules that name
the site exactly.  A rule that matches no site is an error (it is almost always a typo), unless it says
``optional: true`` (e.g. classifier rules in a recipe that also runs on bare encoders).
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Iterable, Iterator

from torch import nn

from .quantizer import QuantSpec, Quantizer

GROUPS = ("weights", "activations", "inputs")


class SiteError(ValueError):
    pass


def quantizers(model: nn.Module, kind: str | None = None, group: str | None = None) -> Iterator[Quantizer]:
    """The quantizers of ``model``, optionally only one ``kind`` ("activation": calibrated from data, which includes
    linear inputs; "weight") or one default ``group`` (GROUPS)."""
    for m in model.modules():
        if isinstance(m, Quantizer) and (kind is None or m.kind == kind) and (group is None or m.group == group):
            yield m


def site_names(model: nn.Module, group: str | None = None) -> list[str]:
    """Site names, optionally of one default group: "weights", "activations" (operation outputs) or "inputs"."""
    if group is not None and group not in GROUPS:
        raise SiteError(f"unknown site group {group!r}; valid: {GROUPS}")
    return [q.name for q in quantizers(model, group=group)]


class SelectorError(ValueError):
    pass


def site_globs(value, key: str, old: str | None = None, old_value=None) -> tuple[str, ...]:
    """One selector dialect (issue 26 #4): a glob or a list of globs over site names, as ``recipe.quant.sites[].match``
    spells them (a linear layer is selected by its weight site, ``encoder.layer.0.attn.query.weight``).  ``old``: the
    key this one replaced, refused with the new spelling of ``old_value``."""
    if old is not None and old_value is not None:
        new = weight_globs(old_value)
        raise SelectorError(f"{old} is now {key}: globs over weight site names, the recipe.quant.sites[].match "
                            f"dialect; write {key}=[{', '.join(new)}]")
    if isinstance(value, str):
        value = [value]
    globs = tuple(str(v) for v in (value or ()))
    if not all(globs):
        raise SelectorError(f"{key}={list(globs)} holds an empty glob")
    return globs


def weight_globs(layer_globs) -> list[str]:
    """Globs over linear names (the old selector dialect) as globs over their weight sites: ``P`` selects the linear
    ``N`` exactly when ``P.weight`` selects ``N.weight``; ``*`` stays ``*``."""
    globs = [layer_globs] if isinstance(layer_globs, str) else list(layer_globs or [])
    return [g if g.endswith(".weight") or g == "*" else f"{g}.weight" for g in map(str, globs)]


def matching(names: Iterable[str], globs: Iterable[str]) -> list[str]:
    """The names (in order) that match any of ``globs``."""
    globs = tuple(globs)
    return [n for n in names if any(fnmatchcase(n, g) for g in globs)]


def _dynamic(spec: dict) -> bool:
    from .granularity import make_granularity

    g = spec.get("granularity")
    if g is None:
        return False
    return make_granularity(g if isinstance(g, str) or not hasattr(g, "keys") else dict(g)).dynamic


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def resolve_specs(names_groups: Iterable[tuple[str, str]], quant_cfg) -> dict[str, QuantSpec]:
    """Site name -> spec, by the precedence above; ``names_groups`` pairs each site name with its default group."""
    names_kinds = list(names_groups)
    rules = [dict(r) for r in (quant_cfg.get("sites") or [])]
    for r in rules:
        if "match" not in r:
            raise SiteError(f"site rule {r} has no 'match' key (a site name or glob)")
        pattern = r["match"]
        if not r.get("optional") and not any(fnmatchcase(n, pattern) for n, _ in names_kinds):
            raise SiteError(f"site rule match={pattern!r} matches no quantization site of this model; "
                            f"list the sites with `qexp ls sites model=...`")
    distinct = [r["match"] for r in rules if r.get("distinct")]
    if distinct and not any(fnmatchcase(n, p) for p in distinct for n, _ in names_kinds):
        # issue 29: the rules that set this recipe apart from another table row match nothing here, so the run
        # would silently equal that row (mp_ptq_r16_io16_out16 on a bare encoder: no pooler, no classifier)
        raise SiteError(f"the site rules that set this recipe apart from another row ({', '.join(distinct)}) match "
                        f"no quantization site of this model: the run would equal that row; run the other recipe")
    out = {}
    for name, group in names_kinds:
        if group not in GROUPS:
            raise SiteError(f"site {name!r}: unknown default group {group!r}; valid: {GROUPS}")
        spec = dict(quant_cfg.get(group) or {"enabled": False})
        globs = [r for r in rules if _is_glob(r["match"]) and fnmatchcase(name, r["match"])]
        exact = [r for r in rules if r["match"] == name]
        for r in globs + exact:
            spec.update({k: v for k, v in r.items() if k not in ("match", "optional", "distinct")})
        if not any("estimator" in r for r in globs + exact) and _dynamic(spec):
            # a dynamic (per-token) site measures each tensor itself: the group's calibration estimator does not apply
            spec["estimator"] = "current_minmax"
        try:
            out[name] = QuantSpec.from_config(spec)
        except ValueError as e:
            raise type(e)(f"site {name!r}: {e}") from None
    return out


def configure(model: nn.Module, quant_cfg) -> dict[str, QuantSpec]:
    """Give every quantizer of ``model`` its spec; quantizers are left ``off`` until calibration."""
    qs = list(quantizers(model))
    specs = resolve_specs(((q.name, q.group) for q in qs), quant_cfg)
    for q in qs:
        fresh = Quantizer(q.name, specs[q.name])
        q.set_state("off")  # learned ranges go back to buffers first
        q.spec, q.estimator, q.state = fresh.spec, fresh.estimator, "off"
        q.x_min = q.x_max = q.perm = q.rounding = None
    return specs


def set_state(model: nn.Module, state: str, kind: str | None = None) -> None:
    for q in quantizers(model, kind):
        q.set_state(state)
