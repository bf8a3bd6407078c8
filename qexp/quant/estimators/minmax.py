"""Min-max range estimators (Bondarenko et al. 2021, Sec. 2)."""
from __future__ import annotations

import torch

from .base import ESTIMATORS, RangeEstimator


@ESTIMATORS.register("current_minmax")
class CurrentMinMax(RangeEstimator):
    """The min and max of the current batch only: with several batches the last one wins (as in the paper).

    Dynamic quantizers (per-token) use it in every forward."""

    name = "current_minmax"
    supports_dynamic = True

    def _observe(self, x: torch.Tensor) -> None:
        self.x_min, self.x_max = x.amin(dim=1), x.amax(dim=1)

    def _compute_range(self, n_bits, symmetric):
        return self.x_min, self.x_max


@ESTIMATORS.register("running_minmax")
class RunningMinMax(RangeEstimator):
    """Exponential moving average of per-batch min and max; the first batch initialises it.

    new = momentum * old + (1 - momentum) * batch.  Momentum 0.9 in Bondarenko et al. 2021, 0.95 in ZeroQuant."""

    name = "running_minmax"

    def __init__(self, momentum: float = 0.9) -> None:
        super().__init__()
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"running_minmax: momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)

    def _observe(self, x: torch.Tensor) -> None:
        b_min, b_max = x.amin(dim=1), x.amax(dim=1)
        if self.n_observed == 0:
            self.x_min, self.x_max = b_min, b_max
        else:
            m = self.momentum
            self.x_min = m * self.x_min + (1 - m) * b_min
            self.x_max = m * self.x_max + (1 - m) * b_max

    def _compute_range(self, n_bits, symmetric):
        return self.x_min, self.x_max

    def config(self) -> dict:
        return {"momentum": self.momentum}
