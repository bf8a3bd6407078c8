"""The uniform baseline of Kwon et al. 2021's comparisons: round-to-nearest per group at the same bit widths as BCQ.

Per group (a row, or ``group_size`` weights of a row, as :class:`~.bcq.BCQ` groups them), an asymmetric b-bit grid
(:func:`~.affine.qparams`):

- ``minmax``: the group's [min, max] range;
- ``weighted_mse`` (our extension, ../shared/research/pwq-bcq-and-quantized-pretraining.md 1.6): the range shrunk by
  the factor k / ``candidates`` (k = 1..candidates) that minimises the importance-weighted error
  sum_j m_j (w_j - q(w_j))^2 of that group, with m from the same :class:`~.bcq.Importance` (pruned weights set to 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .affine import check_bits, fake_quantize, qparams
from .bcq import BCQ, BCQError, Importance

METHODS = ("minmax", "weighted_mse")


@dataclass(frozen=True)
class UniformRows:
    bits: int = 3
    method: str = "minmax"
    group_size: int | None = None
    importance: Importance = Importance()
    candidates: int = 100

    def __post_init__(self) -> None:
        try:
            check_bits(self.bits)
        except ValueError as e:
            raise BCQError(f"uniform baseline: {e}") from None
        if self.method not in METHODS:
            raise BCQError(f"uniform method={self.method!r}; valid: {', '.join(METHODS)}")
        BCQ(2, 0, self.group_size)   # the same group-size checks

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        m, wp = self.importance.weights(w)
        grouping = BCQ(2, 0, self.group_size)
        wg, mg = grouping.groups(wp), grouping.groups(m)
        lo, hi = wg.amin(1, keepdim=True), wg.amax(1, keepdim=True)
        if self.method == "minmax":
            return fake_quantize(wg, qparams(lo, hi, self.bits, symmetric=False)).reshape(w.shape)
        best, best_err = None, None
        for k in range(1, self.candidates + 1):
            f = k / self.candidates
            q = fake_quantize(wg, qparams(lo * f, hi * f, self.bits, symmetric=False))
            err = (mg * (wg - q) ** 2).sum(1, keepdim=True)
            if best is None:
                best, best_err = q, err
            else:
                better = err < best_err
                best = torch.where(better, q, best)
                best_err = torch.where(better, err, best_err)
        return best.reshape(w.shape)
