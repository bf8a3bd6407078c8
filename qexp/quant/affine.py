"""Uniform affine quantization (Bondarenko et al. 2021, Eq. 1-2) and the straight-through estimator.

    x_int = clamp(round(x / s) + z, q_min, q_max)        x_q = s * (x_int - z)

Asymmetric: integer grid [0, 2^b - 1], s = (x_max - x_min) / (2^b - 1), z = clamp(round(-x_min / s), 0, 2^b - 1).
Symmetric: z = 0; signed grid [-2^(b-1), 2^(b-1) - 1] with s = max(|x_min|, x_max) / (2^(b-1) - 1) when the range
holds negative values, else the unsigned grid [0, 2^b - 1] with s = x_max / (2^b - 1).
Before any scale is computed the range is widened to contain 0 (x_min <= 0 <= x_max), so 0 is always exact.
Rounding is round-half-to-even (torch.round), as in the authors' code.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

MIN_BITS, MAX_BITS = 1, 16   # 1: asymmetric grids only (check_bits)
EPS = 1e-8


class BitWidthError(ValueError):
    pass


def check_bits(n_bits, symmetric: bool | None = None) -> int:
    """An integer bit-width in 2..16, or 1 for an asymmetric grid (``symmetric=False``: two levels, min and max; a
    signed symmetric 1-bit grid has no positive level).  Binary-coding weights (Kwon et al. 2021) use 1 bit."""
    try:
        as_int = int(n_bits)
    except (TypeError, ValueError):
        as_int = None
    low = MIN_BITS if symmetric is False else MIN_BITS + 1
    if isinstance(n_bits, bool) or as_int is None or as_int != n_bits or not low <= as_int <= MAX_BITS:
        extra = ("; 1 bit needs an asymmetric grid (symmetric: false)" if as_int == 1 and symmetric is True
                 else "")
        raise BitWidthError(f"bit-width {n_bits!r} is not supported; valid bit-widths are the integers "
                            f"{low} to {MAX_BITS}{extra}")
    return int(n_bits)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest (half to even) with an identity gradient: the one place the STE lives."""
    return x + (torch.round(x) - x).detach()


@dataclass
class QParams:
    scale: torch.Tensor
    zero_point: torch.Tensor
    q_min: int
    q_max: int
    offset_first: bool = False   # DeepSpeed's asymmetric order: round((x - zp_value) / s), dequant q s + zp_value

    @property
    def steps(self) -> int:
        """Grid steps the range spans (``x_max - x_min = steps * scale`` after the range is widened to hold 0): the
        positive half of a signed grid (its scale is max(|x_min|, x_max) / q_max), else the whole grid."""
        return self.q_max if self.q_min < 0 else self.q_max - self.q_min


GRIDS = ("qexp", "deepspeed")


def qparams(x_min: torch.Tensor, x_max: torch.Tensor, n_bits: int, symmetric: bool, grid: str = "qexp") -> QParams:
    """Scale and zero point from a range; differentiable in (x_min, x_max) for learned ranges.

    ``grid="qexp"``: the range is widened to hold 0; symmetric: max(|x_min|, x_max) maps to 2^(b-1) - 1 on the signed
    grid, or to 2^b - 1 on the unsigned grid where the range is non-negative -- chosen per slot (token, channel), so
    one token's grid never depends on its neighbours (issue 14 #11; a mix of signed and unsigned slots is written as
    the unsigned grid with zero point 2^(b-1) on the signed slots: the same levels).  Asymmetric: (x_max - x_min) / (2^b
    - 1), zero point round(-x_min / s) clamped to the grid.

    ``grid="deepspeed"`` (the ZeroQuant authors' code, DeepSpeed ``compression/utils.py``, ../shared/research/
    zeroquant-lkd-and-int8-gemm.md 1.1-1.2): symmetric s = max(|x_min|, |x_max|) / 2^(b-1) on the signed grid always
    (max|x| maps to 2^(b-1) and is clipped to 2^(b-1) - 1); asymmetric s = (x_max - x_min) / 2^b, zero point
    round(x_min / s) (no widening to hold 0, the top clipped by one step)."""
    if grid not in GRIDS:
        raise ValueError(f"unknown quantization grid {grid!r}; valid: {', '.join(GRIDS)}")
    n_bits = check_bits(n_bits, bool(symmetric))
    if grid == "deepspeed":
        if symmetric:
            scale = torch.maximum(x_min.abs(), x_max.abs()) / 2 ** (n_bits - 1)
            return QParams(scale.clamp(min=EPS), torch.zeros_like(scale), -(2 ** (n_bits - 1)), 2 ** (n_bits - 1) - 1)
        scale = ((x_max - x_min) / 2 ** n_bits).clamp(min=EPS)
        return QParams(scale, -round_ste(x_min / scale), 0, 2 ** n_bits - 1, offset_first=True)
    x_min = torch.clamp(x_min, max=0.0)
    x_max = torch.clamp(x_max, min=EPS)
    if symmetric:
        negative = x_min < 0
        if bool(negative.all()):
            q_min, q_max = -(2 ** (n_bits - 1)), 2 ** (n_bits - 1) - 1
        elif not bool(negative.any()):
            q_min, q_max = 0, 2 ** n_bits - 1
        else:   # signed and unsigned slots side by side: one unsigned grid, the signed slots shifted up
            half = 2 ** (n_bits - 1)
            scale = torch.where(negative, torch.maximum(-x_min, x_max) / (half - 1), x_max / (2 ** n_bits - 1))
            zero_point = torch.where(negative, torch.full_like(scale, float(half)), torch.zeros_like(scale))
            return QParams(scale.clamp(min=EPS), zero_point, 0, 2 ** n_bits - 1)
        scale = torch.maximum(-x_min, x_max) / q_max
        zero_point = torch.zeros_like(scale)
    else:
        q_min, q_max = 0, 2 ** n_bits - 1
        scale = (x_max - x_min) / q_max
        zero_point = torch.clamp(round_ste(-x_min / scale.clamp(min=EPS)), q_min, q_max)
    return QParams(scale.clamp(min=EPS), zero_point, q_min, q_max)


def _zp_value(p: QParams) -> torch.Tensor:
    """DeepSpeed's zero point as a value, ``round(x_min / s) * s`` (exactly: ``-zero_point`` is that integer)."""
    return (-p.zero_point) * p.scale


class _FakeQuantizeSTE(torch.autograd.Function):
    """:func:`fake_quantize` for a grid that does not learn (scale and zero point without gradients): the same values
    bit for bit (the inference path's operations, in place on one new tensor) and the same gradient w.r.t. x bit for
    bit -- the autograd chain's own order, ``where(inside, g * s, 0) / s`` -- from one saved boolean mask instead of
    the eight intermediate tensors of the straight-through chain (issue 31 #5: the training path's cost)."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, q_min, q_max, offset_first, zp):
        if offset_first:
            y = torch.sub(x, zp).div_(scale).round_()
        else:
            y = torch.div(x, scale).round_().add_(zero_point)
        outside = (y < q_min).logical_or_(y > q_max)   # where torch.clamp's backward is 0, on the clamp's input
        y.clamp_(q_min, q_max)
        out = y.mul_(scale).add_(zp) if offset_first else y.sub_(zero_point).mul_(scale)
        ctx.save_for_backward(outside, scale)
        ctx.x_dtype = x.dtype
        return out

    @staticmethod
    def backward(ctx, g):
        # the chain's ``where(inside, g * s, 0) / s`` in one new tensor instead of three (the same bits: +0 outside)
        outside, scale = ctx.saved_tensors
        gx = torch.mul(g, scale).masked_fill_(outside, 0.0).div_(scale)
        return gx.to(ctx.x_dtype), None, None, None, None, None, None


FUSED = True   # False: every fake_quantize takes the autograd chain (``qexp bench fakequant`` times both, side by side)


def _learns(t) -> bool:
    return isinstance(t, torch.Tensor) and t.requires_grad


def fake_quantize(x: torch.Tensor, p: QParams) -> torch.Tensor:
    """Quantize then dequantize; the gradient w.r.t. x is 1 inside the grid and 0 where clipped.  ``offset_first``
    (``grid: deepspeed``, asymmetric): DeepSpeed's order, ``round((x - zp) / s) * s + zp``, which differs from
    ``round(x / s) + z`` at exact .5 ties when z is odd (issue 31 #4).  A grid that does not learn takes the fused
    :class:`_FakeQuantizeSTE` (the same values and gradients); a learned range keeps the autograd chain below."""
    if FUSED and not (_learns(p.scale) or _learns(p.zero_point)):
        zp = _zp_value(p) if p.offset_first else None
        return _FakeQuantizeSTE.apply(x, p.scale, p.zero_point, p.q_min, p.q_max, p.offset_first, zp)
    if p.offset_first:
        zp = _zp_value(p)
        x_int = torch.clamp(round_ste((x - zp) / p.scale), p.q_min, p.q_max)
        return x_int * p.scale + zp
    x_int = torch.clamp(round_ste(x / p.scale) + p.zero_point, p.q_min, p.q_max)
    return (x_int - p.zero_point) * p.scale


def _chain(x, scale, zero_point, q_min: float, q_max: float):
    return torch.clamp(torch.round(x / scale) + zero_point, q_min, q_max).sub(zero_point).mul(scale)


def _chain_zero(x, scale, q_min: float, q_max: float):
    return torch.clamp(torch.round(x / scale), q_min, q_max).mul(scale)


def _chain_offset_first(x, scale, zp, q_min: float, q_max: float):
    return torch.clamp(torch.round((x - zp) / scale), q_min, q_max).mul(scale).add(zp)


# the same chains writing into ``x`` (``overwrite``): Inductor turns the copy into the loop's own store, so one pass over
# memory the caller already owns, and no new tensor
def _chain_into(x, scale, zero_point, q_min: float, q_max: float):
    return x.copy_(_chain(x, scale, zero_point, q_min, q_max))


def _chain_zero_into(x, scale, q_min: float, q_max: float):
    return x.copy_(_chain_zero(x, scale, q_min, q_max))


def _chain_offset_first_into(x, scale, zp, q_min: float, q_max: float):
    return x.copy_(_chain_offset_first(x, scale, zp, q_min, q_max))


_INTO = {_chain: _chain_into, _chain_zero: _chain_zero_into, _chain_offset_first: _chain_offset_first_into}


# Issue 31 #5: the inference chain compiled into one loop (torch.compile, Inductor): one pass over x instead of six.
# Every step is exactly rounded in both (IEEE division, round-half-to-even, clamp, subtract, multiply), so the values
# are the eager chain's bit for bit (tests/quant/test_affine.py checks ties and every grid).  Off by default: the first
# call in a process compiles (~20-40 s on a CPU; Inductor then caches on disk), which a one-minute PTQ run does not
# earn back.  On: QEXP_COMPILED_FAKEQUANT=1 in the environment, or ``set_compiled(True)``.
COMPILED = os.environ.get("QEXP_COMPILED_FAKEQUANT") == "1"
_compiled: dict = {}


def set_compiled(on: bool) -> None:
    global COMPILED
    COMPILED = bool(on)


def _compiled_fn(fn):
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=True, fullgraph=True)
    return _compiled[fn]


@torch.no_grad()
def fake_quantize_inplace(x: torch.Tensor, p: QParams, zero_point_is_zero: bool = False,
                          overwrite: bool = False) -> torch.Tensor:
    """:func:`fake_quantize` for inference (no gradient): the same operations in the same order, so the same values
    bit for bit (``x + (round(x) - x)`` is exactly ``round(x)`` in floating point), but one new tensor instead of
    eight and no straight-through bookkeeping.  ``zero_point_is_zero`` skips the two zero-point passes.  With
    :data:`COMPILED` the chain runs as one compiled loop (same values).  ``overwrite``: the result is written into ``x``
    itself (no new tensor: for a caller that owns ``x`` and reads it no more, :attr:`Quantizer.owns_input`)."""
    if COMPILED and x.device.type == "cpu":
        lo, hi = float(p.q_min), float(p.q_max)
        into = (lambda fn: _INTO[fn]) if overwrite else (lambda fn: fn)
        if p.offset_first:
            return _compiled_fn(into(_chain_offset_first))(x, p.scale, _zp_value(p), lo, hi)
        if zero_point_is_zero:
            return _compiled_fn(into(_chain_zero))(x, p.scale, lo, hi)
        return _compiled_fn(into(_chain))(x, p.scale, p.zero_point, lo, hi)
    if p.offset_first:
        zp = _zp_value(p)
        y = x.sub_(zp) if overwrite else torch.sub(x, zp)
        return y.div_(p.scale).round_().clamp_(p.q_min, p.q_max).mul_(p.scale).add_(zp)
    y = x.div_(p.scale) if overwrite else torch.div(x, p.scale)
    y.round_()
    if zero_point_is_zero:
        return y.clamp_(p.q_min, p.q_max).mul_(p.scale)
    return y.add_(p.zero_point).clamp_(p.q_min, p.q_max).sub_(p.zero_point).mul_(p.scale)


def fake_quantize_rounded(x: torch.Tensor, p: QParams, up: torch.Tensor) -> torch.Tensor:
    """Quantize with given rounding decisions: ``floor(x / s) + up`` with ``up`` in [0, 1] (AdaRound, Nagel et al. 2020).
    With ``up`` = 1 exactly where the fractional part is > 0.5 this equals round-to-nearest (ties aside)."""
    x_int = torch.clamp(torch.floor(x / p.scale) + up + p.zero_point, p.q_min, p.q_max)
    return (x_int - p.zero_point) * p.scale


def quantize_int(x: torch.Tensor, p: QParams) -> torch.Tensor:
    """The integer codes (for integer backends and tests), as int32."""
    if p.offset_first:
        return torch.clamp(torch.round((x - _zp_value(p)) / p.scale), p.q_min, p.q_max).to(torch.int32)
    return torch.clamp(torch.round(x / p.scale) + p.zero_point, p.q_min, p.q_max).to(torch.int32)
