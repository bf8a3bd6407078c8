"""Binary-coding quantization of a model's linear weights as a post-weight step (Kwon et al. 2021; recipe key ``bcq``).

After the weight ranges are calibrated, every linear layer whose site matches ``layers`` gets its weight replaced, in
its weight quantizer (``Quantizer.values``), by the BCQ approximation of :mod:`.bcq` at the recipe's weight bit-width
(``recipe.quant.weights.bits``), with the importance knobs E, C, P, the group size, the rounds and the alpha-solver of
``recipe.bcq``.  The recipe's uniform weight spec still says which sites are quantized and at how many bits (site
summary, memory); the integer backends refuse BCQ weights (non-uniform).  The report per layer: the weighted and the
plain squared error, the average scaling factor alpha, the fraction of pruned weights, the seconds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, fields

import torch
from torch import nn

from .bcq import BCQ, BCQError, Importance
from .sites import SelectorError, matching, site_globs

SCHEMES = ("bcq", "uniform_minmax", "uniform_weighted_mse")
GROUP_DIMS = ("row", "column")
KEYS = ("enabled", "scheme", "rounds", "E", "C", "P", "group_size", "solver", "sites", "group_dim",
        "set", "manual_sets",   # pwq_manual: which of Table 5's sets gave E, C, P (for the record)
        "search", "params_from")  # read by the search step (qexp.experiment.bcq_search)


@dataclass(frozen=True)
class BCQConfig:
    scheme: str = "bcq"      # bcq | uniform_minmax | uniform_weighted_mse (the uniform baseline, .uniform_rows)
    rounds: int = 15
    E: float = 0.0
    C: float = 1.0
    P: float = 0.0
    group_size: int | None = None
    solver: str = "cg"
    sites: tuple = ("encoder.layer.*.weight", "decoder.layer.*.weight")   # weight site globs (quant.sites' dialect)
    # row: binary codes and alphas along each output row of W (out, in) -- qexp, the paper's "row-wise";
    # column: along the output dimension, one set per input channel -- Kwon's quant_model_bcq.py (in_ch_wise=True)
    group_dim: str = "row"

    @classmethod
    def from_config(cls, cfg: dict, bits: int) -> "BCQConfig":
        cfg = dict(cfg)
        try:
            if "layers" in cfg:   # issue 26 #4: one selector dialect
                site_globs(None, "recipe.bcq.sites", "recipe.bcq.layers", cfg["layers"])
            if "sites" in cfg:
                cfg["sites"] = site_globs(cfg["sites"], "recipe.bcq.sites")
        except SelectorError as e:
            raise BCQError(str(e)) from None
        unknown = sorted(set(cfg) - set(KEYS))
        if unknown:
            raise BCQError(f"recipe.bcq: unknown key(s) {unknown}; valid: {', '.join(KEYS)}")
        if "set" in cfg and any(cfg.get(k) is None for k in ("E", "C", "P")):
            sets = sorted(cfg.get("manual_sets") or {}, key=lambda k: int(k) if str(k).isdigit() else 0)
            raise BCQError(f"recipe.bcq.set={cfg['set']!r} is not one of the manual sets; valid: {', '.join(sets)}")
        for key in ("enabled", "set", "manual_sets", "search", "params_from"):
            cfg.pop(key, None)
        out = cls(**{f.name: cfg[f.name] for f in fields(cls) if f.name in cfg})
        if out.scheme not in SCHEMES:
            raise BCQError(f"recipe.bcq.scheme={out.scheme!r}; valid: {', '.join(SCHEMES)}")
        if out.group_dim not in GROUP_DIMS:
            raise BCQError(f"recipe.bcq.group_dim={out.group_dim!r}; valid: {', '.join(GROUP_DIMS)}")
        out.quantizer(bits)   # every value checked now, before anything loads
        return out

    @property
    def importance(self) -> Importance:
        return Importance(float(self.E), float(self.C), float(self.P))

    def quantizer(self, bits: int, importance: Importance | None = None):
        """The weight quantizer of this scheme: :class:`BCQ`, or the uniform baseline's :class:`UniformRows`."""
        if self.scheme.startswith("uniform_"):
            from .uniform_rows import UniformRows

            BCQ(int(bits), int(self.rounds), self.group_size, importance or self.importance, self.solver)  # checks
            return UniformRows(int(bits), self.scheme.removeprefix("uniform_"), self.group_size,
                               importance or self.importance)
        return BCQ(int(bits), int(self.rounds), self.group_size, importance or self.importance, self.solver)


def bcq_layers(model: nn.Module, cfg: BCQConfig) -> list[tuple[str, nn.Module]]:
    """(name, QLinear) of every linear whose weight is quantized and whose weight site matches ``cfg.sites``, in model
    order (the name without ``.weight``, as the records report layers); none is an error naming the sites."""
    from .modules import QLinear

    layers = [(m.weight_quantizer.name, m) for m in model.modules()
              if isinstance(m, QLinear) and m.weight_quantizer.spec.enabled]
    picked = set(matching((n for n, _ in layers), cfg.sites))
    chosen = [(n.removesuffix(".weight"), m) for n, m in layers if n in picked]
    if not chosen:
        raise BCQError(f"recipe.bcq.sites={list(cfg.sites)} matches no linear weight site that is quantized; the "
                       f"sites are: {', '.join(n for n, _ in layers[:8])}{' ...' if len(layers) > 8 else ''}")
    check_rows(chosen, cfg.group_size, 0 if cfg.group_dim == "column" else 1)
    return chosen


def check_rows(chosen: list[tuple[str, nn.Module]], group_size: int | None, dim: int = 1) -> None:
    """Every chosen layer's row length must be a multiple of ``group_size``; the message lists the sizes that divide
    *every* row length (issue 27 #17: SmolLM2's 576-wide rows were checked first and 72 offered, which then failed on
    the 1,536-wide rows), before any layer is quantized."""
    import math

    if group_size is None:
        return
    lengths = sorted({int(m.inner.weight.shape[dim]) for _, m in chosen})
    if all(n % int(group_size) == 0 for n in lengths):
        return
    common = math.gcd(*lengths)
    fits = [d for d in range(1, common + 1) if common % d == 0]
    raise BCQError(f"recipe.bcq.group_size={group_size} does not divide every row length of the quantized layers "
                   f"({', '.join(map(str, lengths))}); valid: null (one row) or {', '.join(map(str, fits))}")


@torch.no_grad()
def quantize_layer(name: str, m: nn.Module, cfg: BCQConfig, importance: Importance | None = None) -> dict:
    """Replace one QLinear's weight, in its weight quantizer, by its BCQ approximation; the layer's report."""
    q = m.weight_quantizer
    t0 = time.perf_counter()
    w = m.inner.weight.detach().float()
    column = cfg.group_dim == "column"
    wt = w.t().contiguous() if column else w    # Kwon's in_ch_wise: the stored matrix's columns as the rows
    bcq = cfg.quantizer(q.spec.bits, importance)
    if isinstance(bcq, BCQ):
        w_hat, alpha, _ = bcq.quantize(wt)
        method, avg_alpha = bcq.method, float(alpha.mean())
    else:   # the uniform baseline: no scaling factors alpha
        w_hat, method, avg_alpha = bcq.quantize(wt), cfg.scheme, None
    if column:
        w_hat = w_hat.t().contiguous()
    imp, _ = bcq.importance.weights(w)
    q.values = w_hat.to(m.inner.weight.dtype)
    return {"layer": name, "bits": q.spec.bits, "method": method, "E": bcq.importance.E, "C": bcq.importance.C,
            "P": bcq.importance.P, "weighted_error": float((imp * (w - w_hat) ** 2).sum()),
            "mse": float(((w - w_hat) ** 2).mean()), "avg_alpha": avg_alpha,
            "pruned": float((imp == 0).float().mean()), "seconds": round(time.perf_counter() - t0, 4)}


@torch.no_grad()
def apply_bcq(model: nn.Module, cfg: BCQConfig, progress: bool = False,
              per_layer: dict[str, Importance] | None = None) -> list[dict]:
    """BCQ for every matching linear whose weight is quantized (``per_layer``: a layer's own E, C, P, else the
    config's); returns the per-layer report."""
    chosen = bcq_layers(model, cfg)
    if per_layer is not None:
        unknown = sorted(set(per_layer) - {n for n, _ in chosen})
        if unknown:
            raise BCQError(f"per-layer BCQ settings name layer(s) this run does not quantize: {unknown[:4]}; its "
                           f"layers: {', '.join(n for n, _ in chosen[:6])} ...")
    return [quantize_layer(n, m, cfg, (per_layer or {}).get(n)) for n, m in chosen]
