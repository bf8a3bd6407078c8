"""The integer arithmetic every backend shares: operands (int8 codes, per-row scales, zero points, row sums), the
codes of a weight or an input under its quantizer (exactly fake quantization's), and the exact GEMM reference.

    y[m, n] = float(acc[m, n] - zx[m] * wsum[n]) * (sx[m] * sw[n]) + b[n],   acc = sum_k a[m, k] * w[n, k] (int32)

Codes on an unsigned grid (asymmetric, or symmetric over non-negative data) are stored shifted by -128 so they fit
int8; the shift joins the zero point.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..quant.affine import QParams, quantize_int
from ..quant.granularity import PerTensor, PerToken

K_ALIGN = 16          # the GEMM's K (and row strides) are padded to a multiple of 16 bytes (16-byte cp.async)
INT32_MAX = 2 ** 31 - 1


class IntegerBackendError(ValueError):
    pass


@dataclass
class Int8Weight:
    """A quantized weight as the GEMM reads it: codes (N, Kp) int8 zero-padded, one fp32 scale per output row,
    the row sums of the codes (for activation zero points), and the true K."""

    codes: torch.Tensor
    scale: torch.Tensor
    wsum: torch.Tensor
    k: int

    def to(self, device) -> Int8Weight:
        return Int8Weight(self.codes.to(device), self.scale.to(device), self.wsum.to(device), self.k)


@dataclass
class Int8Activation:
    """Quantized activations: codes (M, Kp) int8 zero-padded, per-row fp32 scale and int32 zero point,
    x ~ scale[m] * (codes[m, k] - zero_point[m])."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor


def padded(k: int) -> int:
    return -(-k // K_ALIGN) * K_ALIGN


def _pad_k(t: torch.Tensor) -> torch.Tensor:
    k = t.shape[1]
    return t if k == padded(k) else torch.nn.functional.pad(t, (0, padded(k) - k))


def _per_row(t: torch.Tensor, rows: int, cols: int, what: str) -> torch.Tensor:
    """A scale / zero point broadcastable to (rows, cols) as one value per row, or an error if it varies along K."""
    full = t.expand(rows, cols) if t.dim() <= 2 else None
    if full is None or not bool((full == full[:, :1]).all()):
        raise IntegerBackendError(f"{what} varies along the reduction dimension, so it cannot be factored out of the "
                                  f"integer sum; the integer path needs one scale per row")
    return full[:, 0].contiguous()


def _check_bits(p: QParams, what: str) -> None:
    if p.q_max - p.q_min > 255:
        raise IntegerBackendError(f"{what}: a grid of {p.q_max - p.q_min + 1} levels does not fit INT8; the integer "
                                  f"backends run 2-8 bit codes")


def to_int8(codes: torch.Tensor, zero_point: torch.Tensor, p: QParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes on [q_min, q_max] as int8 plus the matching zero point: an unsigned grid shifts by -128."""
    shift = 128 if p.q_min >= 0 and p.q_max > 127 else 0
    return (codes - shift).to(torch.int8), (zero_point.round().to(torch.int32) - shift)


def weight_operand(q, weight: torch.Tensor) -> Int8Weight:
    """The integer codes of ``weight`` under weight quantizer ``q`` (state fixed), exactly those of fake quantization."""
    w = weight.detach().float()
    if w.dim() != 2:
        raise IntegerBackendError(f"{q.name}: the integer path needs a 2-D weight, got {tuple(w.shape)}")
    p = q.grid(w)
    _check_bits(p, q.name)
    if not q.spec.symmetric or p.q_min >= 0:
        raise IntegerBackendError(f"{q.name}: the integer path needs symmetric weights on the signed grid "
                                  f"(zero point 0); the recipe sets symmetric={q.spec.symmetric}")
    n, k = w.shape
    try:
        scale = _per_row(p.scale, n, k, f"{q.name}: the weight scale ({q.spec.granularity})")
    except IntegerBackendError as e:
        raise IntegerBackendError(f"{e}: per_tensor, per_channel, or per_group with n_groups dividing the {n} rows "
                                  f"(whole rows per group)") from None
    if q.rounding is not None:  # AdaRound's learned decisions
        codes = torch.clamp(torch.floor(w / p.scale) + q.rounding + p.zero_point, p.q_min, p.q_max)
    else:
        codes = quantize_int(w, p)   # DeepSpeed's asymmetric order included (affine.QParams.offset_first)
    codes = codes.to(torch.int32)
    return Int8Weight(_pad_k(codes.to(torch.int8)), scale.float(), codes.sum(dim=1).to(torch.int32), k)


def check_input_spec(q, backend: str) -> None:
    g = q.spec.granularity
    if not isinstance(g, (PerToken, PerTensor)):
        raise IntegerBackendError(f"{q.name}: input granularity {g} is not supported by the integer path; valid: "
                                  f"per_token (dynamic) or per_tensor (static)")
    if q.spec.bits > 8:
        raise IntegerBackendError(f"{q.name}: {q.spec.bits}-bit inputs do not fit INT8; valid: 2-8 bits")
    if backend == "cupy_int8" and isinstance(g, PerToken) and not q.spec.symmetric:
        raise IntegerBackendError(f"{q.name}: the per-token quantize kernel is symmetric (ZeroQuant's token-wise "
                                  f"activations); asymmetric per-token inputs run on inference.backend=torch_int")


def activation_operand(q, x2d: torch.Tensor) -> Int8Activation:
    """Torch reference of the quantize kernels: the integer codes of ``x2d`` (M, K) under input quantizer ``q``,
    computed in fp32 with the quantizer's own parameters (so they equal fake quantization's codes)."""
    x = x2d.float()
    p = q.grid(x)
    _check_bits(p, q.name)
    m, k = x.shape
    scale = _per_row(p.scale, m, k, f"{q.name}: the input scale")
    zp = _per_row(p.zero_point, m, k, f"{q.name}: the input zero point")
    codes = quantize_int(x, p)
    codes8, zp8 = to_int8(codes, zp, p)
    return Int8Activation(_pad_k(codes8), scale.float(), zp8)


def reference_gemm(a: Int8Activation, w: Int8Weight, bias: torch.Tensor | None = None, gelu: bool = False,
                   out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The kernels' arithmetic, exactly: int32 accumulation (checked), zero-point fold, fp32 epilogue in their order."""
    if a.codes.shape[1] != w.codes.shape[1]:
        raise IntegerBackendError(f"padded K differs: activations {tuple(a.codes.shape)}, weights "
                                  f"{tuple(w.codes.shape)}")
    acc = a.codes.double() @ w.codes.double().T  # every partial sum is an integer below 2^53: exact
    if bool((a.zero_point != 0).any()):
        acc = acc - a.zero_point.double()[:, None] * w.wsum.double()[None, :]
    if bool((acc.abs() > INT32_MAX).any()):
        raise IntegerBackendError(f"the int32 accumulator overflows (max |acc| = {int(acc.abs().max())}) at K={w.k}")
    y = acc.float() * (a.scale[:, None] * w.scale[None, :])
    if bias is not None:
        y = y + bias.float()
    if gelu:
        y = (0.5 * y) * (1.0 + torch.erf(y * 0.70710678118654752))
    return y.to(out_dtype)
