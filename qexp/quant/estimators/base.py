"""Range estimators observe, then solve (STYLE 3).

An estimator sees *slot views*: 2-D tensors ``(n_slots, n_elements)`` produced by a granularity (see
``qexp.quant.granularity``), so each estimator is written once for every granularity.

- ``observe(x)``: accumulate statistics; returns nothing and never changes the forward.
- ``compute_range(n_bits, symmetric)``: ``(x_min, x_max)``, each of shape ``(n_slots,)``.
- ``reset()``: forget everything.
"""
from __future__ import annotations

import torch

from qexp.common.registry import Registry, name_and_kwargs

ESTIMATORS: Registry[type["RangeEstimator"]] = Registry("range estimator")


class CalibrationError(RuntimeError):
    pass


class RangeEstimator:
    name = "base"
    #: whether ranges can be computed from the current tensor alone (needed by dynamic granularities)
    supports_dynamic = False

    def __init__(self) -> None:
        self.n_observed = 0

    def observe(self, x: torch.Tensor) -> None:
        if x.dim() != 2:
            raise ValueError(f"{self.name}: expected a (slots, elements) view, got shape {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            n_bad = int((~torch.isfinite(x)).sum())
            raise CalibrationError(f"{n_bad} non-finite values (NaN/Inf) in the calibration data")
        self._observe(x.detach().to(torch.float64))
        self.n_observed += 1

    def _observe(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def expect(self, n_bits: int, symmetric: bool) -> None:
        """Hint: the (bits, symmetric) that compute_range will be asked for.  Most estimators ignore it."""

    def compute_range(self, n_bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if self.n_observed == 0:
            raise CalibrationError(f"{self.name}: compute_range() called before any data was observed")
        return self._compute_range(n_bits, symmetric)

    def _compute_range(self, n_bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def reset(self) -> None:
        self.__init__(**self.config())

    def config(self) -> dict:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.config().items())
        return f"{self.name}({args})"


def make_estimator(spec) -> RangeEstimator:
    """Build an estimator from a name or a mapping ``{name: ..., **kwargs}``."""
    if isinstance(spec, RangeEstimator):
        return spec
    name, kwargs = name_and_kwargs(spec, "range estimator")
    cls = ESTIMATORS.get(name)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments {kwargs} for range estimator {name!r}: {e}") from None
