from .base import ESTIMATORS, CalibrationError, RangeEstimator, make_estimator
from . import minmax, mse, percentile  # noqa: F401  (registration)

__all__ = ["ESTIMATORS", "CalibrationError", "RangeEstimator", "make_estimator"]
