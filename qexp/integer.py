"""The integer path of a quantized linear layer, emulated exactly in torch (CPU or GPU): the oracle for the INT8 GEMM
kernels of issue 5 and their CPU fallback.

    y = s_x * s_w * (sum_k (x_int - z_x) * w_int) + b

with integer codes from the same quantizer math as fake quantization (``qexp.quant.affine``), integer accumulation
(int32, checked for overflow), and the dequantization applied once per output (per-row activation scale times
per-column weight scale), which is what a fused GEMM epilogue does.  Weights are symmetric (zero point 0), per-tensor
or per output channel; activations per-tensor or per-token, symmetric or asymmetric (the zero point is folded into
the accumulator: ``acc - z_x * sum_k w_int``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .quant.affine import QParams, quantize_int

INT32_MAX = 2 ** 31 - 1


class IntegerPathError(ValueError):
    pass


@dataclass
class IntTensor:
    """Integer codes with the scale and zero point that dequantize them: ``x ~ scale * (codes - zero_point)``."""

    codes: torch.Tensor       # int32
    scale: torch.Tensor       # broadcastable to codes
    zero_point: torch.Tensor  # broadcastable to codes (integer-valued)

    @classmethod
    def quantize(cls, x: torch.Tensor, p: QParams) -> IntTensor:
        return cls(quantize_int(x, p), p.scale, p.zero_point)

    def dequantize(self) -> torch.Tensor:
        return (self.codes - self.zero_point) * self.scale


def _per_row(t: torch.Tensor, rows: int, what: str) -> torch.Tensor:
    """A scale/zero point of an (M, K) operand as an (M, 1) column: per-tensor or one value per row only."""
    if t.numel() == 1:
        return t.reshape(1, 1).expand(rows, 1)
    if t.numel() == rows and (t.dim() == 0 or t.shape[-1] == 1 or t.dim() == 1):
        return t.reshape(rows, 1)
    raise IntegerPathError(f"{what} of shape {tuple(t.shape)} is neither per-tensor nor one per row ({rows} rows): the "
                           f"integer path supports per-tensor and per-token activations, per-tensor and per-output-"
                           f"channel weights (a scale that varies along the reduction dimension cannot be factored "
                           f"out of the integer sum)")


def int_accumulate(x: IntTensor, w: IntTensor) -> torch.Tensor:
    """sum_k (x_int - z_x)[m, k] * w_int[n, k] as int32, exactly; (M, K) x (N, K) -> (M, N)."""
    if x.codes.dim() != 2 or w.codes.dim() != 2 or x.codes.shape[1] != w.codes.shape[1]:
        raise IntegerPathError(f"shapes {tuple(x.codes.shape)} and {tuple(w.codes.shape)} do not make an (M, K) x (N, K) "
                               f"GEMM")
    if bool((w.zero_point != 0).any()):
        raise IntegerPathError("weights must be symmetric (zero point 0) on the integer path")
    m = x.codes.shape[0]
    zx = _per_row(x.zero_point, m, "activation zero point").to(torch.int64)
    acc = x.codes.to(torch.int64) @ w.codes.to(torch.int64).T - zx * w.codes.to(torch.int64).sum(dim=1)[None, :]
    if bool((acc.abs() > INT32_MAX).any()):
        raise IntegerPathError(f"the int32 accumulator overflows (max |acc| = {int(acc.abs().max())}); reduce K "
                               f"({x.codes.shape[1]}) or the bit-width")
    return acc.to(torch.int32)


def int_linear(x: IntTensor, w: IntTensor, bias: torch.Tensor | None = None,
               out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The fused epilogue: int32 accumulator x per-row activation scale x per-column weight scale (+ bias)."""
    acc = int_accumulate(x, w)
    m, n = acc.shape
    sx = _per_row(x.scale, m, "activation scale")
    sw = _per_row(w.scale, n, "weight scale").reshape(1, n)
    y = acc.to(out_dtype) * (sx.to(out_dtype) * sw.to(out_dtype))
    return y if bias is None else y + bias.to(out_dtype)
