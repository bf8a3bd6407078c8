"""Percentile range estimator: clips the tails.

The range is [P_(100-p), P_p] of each batch (both tails; the authors' per-tensor code took the raw max as the upper
bound, see README "Deviations"), averaged over the calibration batches -- or, with ``momentum`` m, an exponential
moving average x <- m x + (1 - m) x_batch (the authors' 2023 running min-max with a percentile).  Percentiles use linear interpolation, as
``numpy.percentile`` does by default."""
from __future__ import annotations

import torch

from .base import ESTIMATORS, RangeEstimator


def _percentile(x: torch.Tensor, q: float) -> torch.Tensor:
    """Row-wise percentile with linear interpolation (numpy's default); works beyond torch.quantile's size cap."""
    n = x.shape[1]
    pos = q / 100.0 * (n - 1)
    lo, hi = int(pos // 1), min(int(pos // 1) + 1, n - 1)
    frac = pos - lo
    k_lo = torch.kthvalue(x, lo + 1, dim=1).values
    k_hi = k_lo if hi == lo else torch.kthvalue(x, hi + 1, dim=1).values
    return k_lo + frac * (k_hi - k_lo)


@ESTIMATORS.register("percentile")
class Percentile(RangeEstimator):
    name = "percentile"

    def __init__(self, percentile: float = 99.99, momentum: float | None = None) -> None:
        super().__init__()
        if not 50.0 < float(percentile) <= 100.0:
            raise ValueError(f"percentile: percentile must be in (50, 100], got {percentile!r}")
        if momentum is not None and not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"percentile: momentum must be in [0, 1) or null (a plain mean), got {momentum!r}")
        self.percentile = float(percentile)
        self.momentum = None if momentum is None else float(momentum)

    def _observe(self, x: torch.Tensor) -> None:
        b_min, b_max = _percentile(x, 100.0 - self.percentile), _percentile(x, self.percentile)
        if self.n_observed == 0:
            self.x_min, self.x_max = b_min, b_max
        elif self.momentum is not None:
            m = self.momentum
            self.x_min = m * self.x_min + (1 - m) * b_min
            self.x_max = m * self.x_max + (1 - m) * b_max
        else:
            n = self.n_observed
            self.x_min = (self.x_min * n + b_min) / (n + 1)
            self.x_max = (self.x_max * n + b_max) / (n + 1)

    def _compute_range(self, n_bits, symmetric):
        return self.x_min, self.x_max

    def config(self) -> dict:
        return {"percentile": self.percentile, **({} if self.momentum is None else {"momentum": self.momentum})}
