"""From a composed config to what the quantization core needs: the effective calibration and the quant config.

Both are computed once per run, by :func:`qexp.experiment.pipeline.run` before any model loads (every check here fails
fast), and handed to the task kind in its :class:`qexp.kinds.base.RunContext`.
"""
from __future__ import annotations

from omegaconf import OmegaConf

from ..quant.quantizer import QuantSpec
from ..quant.sites import GROUPS

# no recipe = this, which equals conf/recipe/fp32.yaml (tested), so both spellings give the same run id
FP32 = {"name": "fp32", "quant": {"weights": {"enabled": False}, "activations": {"enabled": False}, "sites": []}}


class CalibrationConfigError(ValueError):
    pass


def enabled(recipe, key: str) -> bool:
    """Whether the recipe's optional step ``key`` (``qat``, ``adaround``, ``lkd``) is present and not switched off."""
    step = recipe.get(key)
    return step is not None and bool(step.get("enabled", True))


def effective_calibration(cfg):
    """The calibration group, with a recipe's own calibration on top (``recipe.calibration``: the MP/PEG recipes use
    Section 5's current min-max of one sequence for the activations, the group's weight estimator), then a QAT
    recipe's range initialisation (``recipe.qat.init_calibration``; the authors' QAT README initialises from 16 padded
    sequences, not from the per-task PTQ winners)."""
    cal = cfg.calibration
    if cfg.recipe.get("calibration"):   # a recipe's own calibration (Bondarenko et al. 2021 Sec. 5: MP/PEG recipes)
        cal = OmegaConf.merge(cal, cfg.recipe.calibration)
    if enabled(cfg.recipe, "qat") and cfg.recipe.qat.get("init_calibration"):
        cal = OmegaConf.merge(cal, cfg.recipe.qat.init_calibration)
    for key in ("batch_size", "num_batches"):
        value = cal.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CalibrationConfigError(f"calibration.{key}={value!r} must be a positive integer")
    return cal


def _estimator(est_cfg, momentum) -> dict:
    est = dict(est_cfg) if not isinstance(est_cfg, str) else {"name": est_cfg}
    if est.get("name") == "running_minmax":
        est.setdefault("momentum", momentum)
    return est


def quant_config(recipe: dict, calibration) -> dict:
    """The recipe says what to quantize; the calibration group gives the default range estimators."""
    q = recipe.get("quant") or {}
    out = {"sites": list(q.get("sites") or [])}
    for group in GROUPS:
        spec = dict(q.get(group) or {"enabled": False})
        if q.get("grid"):   # recipe.quant.grid: every site's default grid (qexp | deepspeed)
            spec.setdefault("grid", q["grid"])
        # linear inputs are activations: they take the activation estimator unless the recipe names one
        spec.setdefault("estimator", _estimator(calibration["weights" if group == "weights" else "activations"],
                                                calibration.momentum))
        try:
            QuantSpec.from_config(spec)  # fail before any expensive work
        except ValueError as e:
            raise type(e)(f"recipe.quant.{group}: {e}") from None
        out[group] = spec
    return out
