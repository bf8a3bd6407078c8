"""Dynamic (max-scaled) quantization formats, as quantized *training* uses them (Chitsaz et al. 2024, Eq. 1).

A :class:`TensorFormat` is a frozen value object: bit-width, granularity and symmetry.  Its ranges are taken from the
tensor itself in every call (nothing is calibrated, nothing is clipped):

    symmetric:   s = max|x| / (2^(b-1) - 1)             x_q = s * clamp(round(x / s), -2^(b-1), 2^(b-1) - 1)
    asymmetric:  s = (max x - min x) / (2^b - 1)        z = round(-min x / s)
                 x_q = s * (clamp(round(x / s) + z, 0, 2^b - 1) - z)

with max/min per slot of the granularity (:mod:`.granularity`): ``per_tensor``, ``per_token`` (one range per row of
the last dimension: a token of an activation or of an output gradient), ``per_channel`` (``axis``: 0 for a weight's
output channel -- the paper's "per-column" of ``W^T`` -- and -1 for an activation's feature).  The symmetric grid
never reaches its lowest code (``max|x|`` maps to ``2^(b-1) - 1``), as in the paper and the authors' code.  A slot of
zeros gets the smallest positive scale, so it stays exactly zero.  Rounding is half-to-even (``torch.round``).

:meth:`TensorFormat.fake_quantize` has no gradient of its own; :meth:`TensorFormat.ste` passes the gradient straight
through (no clipping can happen with max-scaled ranges, so the STE is the identity everywhere).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .affine import check_bits
from .granularity import Granularity, GranularityError, PerChannel, PerTensor, PerToken

GRANULARITY_NAMES = {"per_tensor": lambda axis: PerTensor(), "per_token": lambda axis: PerToken(),
                     "per_channel": lambda axis: PerChannel(axis)}


class FormatError(ValueError):
    """A quantization format that names a bad bit-width, granularity or option."""


LEVELS = ("paper", "authors")


@dataclass(frozen=True)
class TensorFormat:
    """``min_range``: the authors' floor on the range before the scale is taken (``max|x|`` or ``max - min`` clamped
    from below; 0 = none, the paper's Eq. 1).  ``levels``: the asymmetric grid, ``paper`` = 2^b levels, step
    (max - min) / (2^b - 1); ``authors`` = their code's 2^b - 1 levels, step (max - min) / (2 Qp) with Qp = 2^(b-1) - 1
    (../shared/research/pwq-bcq-and-quantized-pretraining.md, "2024 authors' quantizer").  Symmetric grids are the same
    in both."""
    bits: int
    granularity: Granularity
    symmetric: bool = True
    min_range: float = 0.0
    levels: str = "paper"

    def __post_init__(self) -> None:
        try:
            check_bits(self.bits)
        except ValueError as e:
            raise FormatError(str(e)) from None
        if self.levels not in LEVELS:
            raise FormatError(f"levels={self.levels!r}; valid: {', '.join(LEVELS)}")
        if isinstance(self.min_range, bool) or not isinstance(self.min_range, (int, float)) or self.min_range < 0:
            raise FormatError(f"min_range={self.min_range!r} must be a number >= 0")
        if not isinstance(self.granularity, (PerTensor, PerToken, PerChannel)):
            raise FormatError(f"dynamic quantization supports per_tensor, per_token and per_channel, not "
                              f"{self.granularity}")

    @property
    def grid(self) -> tuple[int, int]:
        if self.symmetric:
            return -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        return 0, 2 ** self.bits - (2 if self.levels == "authors" else 1)

    def _slot_stat(self, x: torch.Tensor, reduce) -> torch.Tensor:
        """``reduce`` (amax / amin) over each slot, shaped to broadcast against ``x``."""
        g = self.granularity
        if isinstance(g, PerTensor):
            return reduce(x)
        if isinstance(g, PerToken):
            g.check(x.shape)
            return reduce(x, dim=-1, keepdim=True)
        g.check(x.shape)
        axis = g.axis % x.dim()
        return reduce(x, dim=[d for d in range(x.dim()) if d != axis], keepdim=True)

    def scale_zero(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The scale (and, asymmetric, the zero point) of every slot, shaped to broadcast against ``x``."""
        tiny = torch.finfo(x.dtype).tiny
        if self.symmetric:
            r = self._slot_stat(x.abs(), torch.amax)
            if self.min_range:
                r = r.clamp_min(self.min_range)
            return (r / self.grid[1]).clamp_min(tiny), None
        lo, hi = self._slot_stat(x, torch.amin), self._slot_stat(x, torch.amax)
        r = hi - lo
        if self.min_range:
            r = r.clamp_min(self.min_range)
        scale = (r / self.grid[1]).clamp_min(tiny)
        return scale, torch.round(-lo / scale)

    @torch.no_grad()
    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize-dequantize ``x`` (no autograd)."""
        scale, zero = self.scale_zero(x)
        q_min, q_max = self.grid
        if zero is None:
            return torch.round(x / scale).clamp_(q_min, q_max).mul_(scale)
        return (torch.round(x / scale).add_(zero).clamp_(q_min, q_max).sub_(zero)).mul_(scale)

    def ste(self, x: torch.Tensor) -> torch.Tensor:
        """Fake quantization with the straight-through estimator (identity gradient)."""
        return x + (self.fake_quantize(x) - x).detach()

    def __str__(self) -> str:
        extra = (f", min range {self.min_range:g}" if self.min_range else "") + \
            (", authors' 2^b-1 levels" if self.levels == "authors" and not self.symmetric else "")
        return f"{self.bits}-bit {self.granularity} {'symmetric' if self.symmetric else 'asymmetric'}{extra}"


def make_format(spec, where: str, allowed: tuple[str, ...], channel_axis: int = 0) -> TensorFormat | None:
    """A format from a config mapping ``{bits, granularity, symmetric}`` (None or ``enabled: false``: off).

    ``where`` names the config key in errors; ``allowed`` lists the granularities that make sense there."""
    if spec is None:
        return None
    spec = dict(spec)
    if not spec.pop("enabled", True):
        return None
    unknown = set(spec) - {"bits", "granularity", "symmetric", "min_range", "levels"}
    if unknown:
        raise FormatError(f"{where}: unknown key(s) {sorted(unknown)}; valid: bits, granularity, symmetric, "
                          f"min_range, levels, enabled")
    name = str(spec.get("granularity", "per_tensor"))
    if name not in allowed:
        raise FormatError(f"{where}.granularity={name!r} is not valid here; valid: {', '.join(allowed)}")
    symmetric = spec.get("symmetric", True)
    if not isinstance(symmetric, bool):
        raise FormatError(f"{where}.symmetric={symmetric!r} must be true or false")
    if "bits" not in spec:
        raise FormatError(f"{where} has no bits (valid: the integers 2 to 16)")
    try:
        return TensorFormat(spec["bits"], GRANULARITY_NAMES[name](channel_axis), symmetric,
                            float(spec.get("min_range", 0.0)) if not isinstance(spec.get("min_range"), str)
                            else spec["min_range"], str(spec.get("levels", "paper")))
    except (FormatError, GranularityError) as e:
        raise FormatError(f"{where}: {e}") from None
