"""``inference.backend=cpu_int8``: real INT8 GEMMs on x86 CPUs through PyTorch's own oneDNN kernels.

Each quantized linear runs ``torch.ops.onednn.qlinear_pointwise`` on plain uint8 activation codes and an int8 weight
packed once (``qlinear_prepack``); the activation zero point (including the -128 storage shift of
:mod:`qexp.integer.backends`) is folded in by oneDNN in int32, and the epilogue (per-token x per-channel scales, then
the bias) is applied in fp32 in the oracle's order, so the outputs equal ``torch_int`` up to the fp32 rounding of
accumulators beyond 2^24.

Exactness on every CPU: x86 CPUs without VNNI multiply u8 x s8 through ``vpmaddubsw``, whose pair sums saturate at
int16 (255*127*2 > 32767), so a plain INT8 GEMM silently loses accuracy there.  At first use the backend runs a probe
that bites exactly there and compares with the exact sum.  Where it saturates, activations are split into two GEMMs,
``u = min(u, 127) + rest`` (pair sums then stay within int16: 127*128*2 and 128*128*2 = 32768 on the negative side),
which is exact at twice the arithmetic.  The record's ``inference`` entry says which path and ISA ran.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

from ..quant.affine import qparams
from .operands import Int8Activation, Int8Weight, IntegerBackendError


def available() -> bool:
    return hasattr(torch.ops, "onednn") and hasattr(torch.ops.onednn, "qlinear_pointwise")


def _gemm_u8(u: torch.Tensor, packed: torch.Tensor, n: int, zero_point: int = 0) -> torch.Tensor:
    """(u - zero_point) @ w.T as fp32 (oneDNN: int32 accumulation, then one conversion), u uint8 (M, K)."""
    ones, zeros = torch.ones(n), torch.zeros(n, dtype=torch.int64)
    return torch.ops.onednn.qlinear_pointwise(u, 1.0, int(zero_point), packed, ones, zeros, None, 1.0, 0,
                                              torch.float32, "none", [], "")


@cache
def saturates() -> bool:
    """Whether this CPU's u8 x s8 INT8 GEMM saturates (no VNNI): 255 x 127 on every element of a K=64 row."""
    k = 64
    packed = torch.ops.onednn.qlinear_prepack(torch.full((8, k), 127, dtype=torch.int8), None)
    y = _gemm_u8(torch.full((4, k), 255, dtype=torch.uint8), packed, 8)
    return bool((y != 255 * 127 * k).any())


@dataclass
class PackedWeight:
    packed: torch.Tensor      # oneDNN's prepacked int8 weight (N, K)
    scale: torch.Tensor       # fp32 per output row
    wsum: torch.Tensor        # int32 row sums of the codes (per-token zero points)
    n: int
    k: int


class CpuInt8Backend:
    name = "cpu_int8"

    def __init__(self):
        if not available():
            raise IntegerBackendError("inference.backend=cpu_int8 needs PyTorch's oneDNN INT8 ops "
                                      "(torch.ops.onednn.qlinear_pointwise), which this torch build lacks; "
                                      "use inference.backend=torch_int")
        self.split = saturates()
        self.isa = torch.backends.cpu.get_cpu_capability()

    def describe(self) -> dict:
        return {"path": "split-u7 (two exact GEMMs: this CPU's u8*s8 saturates)" if self.split else "single",
                "isa": self.isa, "threads": torch.get_num_threads()}

    def prepare(self, w: Int8Weight, device) -> PackedWeight:
        if torch.device(device).type != "cpu":
            raise IntegerBackendError(f"inference.backend=cpu_int8 runs on the CPU; the model is on {device} "
                                      f"(set device=cpu, or use inference.backend=cupy_int8 on a GPU)")
        codes = w.codes[:, :w.k].contiguous()
        return PackedWeight(torch.ops.onednn.qlinear_prepack(codes, None), w.scale.float(), w.wsum, codes.shape[0],
                            w.k)

    def quantize(self, q, x2d: torch.Tensor) -> Int8Activation:
        """The input's codes straight onto the unsigned grid oneDNN reads: uint8 codes u and zero points in the same
        domain (x ~ scale * (u - zero_point), as for int8 storage), with one scale per row computed from the row's
        range (per token) or the site's static range.  The codes equal ``activation_operand``'s plus 128 (tested);
        this path skips the oracle's per-element scale tensors."""
        x = x2d.float()
        if q.spec.granularity.dynamic:
            slots = q.slots(x)
            lo, hi = slots.amin(1), slots.amax(1)  # torch.aminmax(dim=1) is ~20x slower on the CPU (measured)
        else:
            lo, hi = q.x_min.reshape(-1).float(), q.x_max.reshape(-1).float()
        p = qparams(lo, hi, q.spec.bits, q.spec.symmetric, q.spec.grid)  # the quantizer's own grid (qexp|deepspeed)
        if p.q_max - p.q_min > 255:
            raise IntegerBackendError(f"{q.name}: a grid of {p.q_max - p.q_min + 1} levels does not fit INT8")
        m = x.shape[0]
        scale, zp = p.scale.expand(m), p.zero_point.expand(m)
        offset = 128 - (128 if p.q_min >= 0 and p.q_max > 127 else 0)  # signed grids move up by 128
        codes = torch.div(x, scale[:, None]).round_().add_(zp[:, None]).clamp_(p.q_min, p.q_max).add_(offset)
        return Int8Activation(codes.to(torch.uint8), scale.contiguous(), zp.round().to(torch.int32) + offset)

    def accumulate(self, a: Int8Activation, w: PackedWeight) -> torch.Tensor:
        """sum_k (a[m, k] - zp[m]) w[n, k] as fp32: exact in int32 inside oneDNN, one rounding on conversion (per
        GEMM on the split path).  ``a`` holds uint8 codes (from :meth:`quantize`) or int8 storage (``code - 128``)."""
        if a.codes.dtype == torch.uint8:
            u, zp = a.codes[:, :w.k], a.zero_point.to(torch.int64)
        else:  # int8 storage -> the unsigned code
            u, zp = (a.codes[:, :w.k].to(torch.int16) + 128).to(torch.uint8), a.zero_point.to(torch.int64) + 128
        u = u.contiguous()
        uniform = bool((zp == zp[0]).all()) if len(zp) else True
        z = int(zp[0]) if uniform and len(zp) else 128
        if self.split:
            hi = torch.clamp(u, max=127)
            acc = _gemm_u8(hi, w.packed, w.n, z).add_(_gemm_u8(u - hi, w.packed, w.n, 0))
        else:
            acc = _gemm_u8(u, w.packed, w.n, z)
        if not uniform:  # per-token zero points: oneDNN takes one, the rest is folded here
            acc = acc - ((zp - z)[:, None] * w.wsum.to(torch.int64)[None, :]).float()
        return acc

    def gemm(self, a: Int8Activation, w: PackedWeight, bias, out_dtype):
        y = self.accumulate(a, w).mul_(a.scale[:, None] * w.scale[None, :])  # the oracle's order: acc * (sx * sw)
        if bias is not None:
            y = y.add_(bias.float())
        return y.to(out_dtype)
