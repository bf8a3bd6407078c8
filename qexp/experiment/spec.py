"""The run spec: what a run quantizes and how, interpreted once from the composed config before anything loads (issue 26
#1).

The recipe used to be read in five places from the raw config (the quant config, the post-weight steps, the kind's
checks, quantized training, the pipeline's no-op guard), and they disagreed (``qpt.enabled: false`` was off in two of
them and quantizing in a third).  :meth:`RunSpec.parse` reads it once: the quant config the sites take, the effective
calibration, the post-weight steps (BCQ, AdaRound, LKD), quantized training (``qpt``), QAT's hyper-parameters, the
train-objective options and the inference backend, each validated by its own parser; the pipeline and the task kinds
decide from this object only (the no-op guard, backend x recipe, BCQ x bits, qpt on or off), so they cannot disagree.
"""
from __future__ import annotations

from dataclasses import dataclass

from omegaconf import OmegaConf

from ..config.quant import FP32, effective_calibration, enabled, quant_config
from ..config.training_quant import TrainingQuant, training_quant
from .steps import PostWeightSteps


class NoOpRecipeError(ValueError):
    pass


def backend_name(cfg) -> str:
    """``inference.backend`` (fake quantization unless a config says otherwise)."""
    return str((cfg.get("inference") or {}).get("backend", "fake"))


@dataclass(frozen=True)
class RunSpec:
    recipe: str                         # the recipe's name (records, tables)
    quant: dict                         # per-group defaults and site rules (qexp.config.quant.quant_config)
    calibration: object                 # the calibration group with the recipe's own and QAT's init on top
    steps: PostWeightSteps              # BCQ, AdaRound, LKD between weight and activation calibration
    training: TrainingQuant | None      # quantized training (recipe.qpt), None when absent or enabled: false
    qat: dict | None                    # QAT's checked hyper-parameters (recipe.qat), None when off
    train_objective: dict | None        # recipe.train_objective: the loss and metric on training examples
    backend: str                        # inference.backend

    @classmethod
    def parse(cls, cfg, resolved: dict | None = None) -> "RunSpec":
        """Every recipe-level decision, validated; the first bad value raises with its name and the valid choices."""
        from ..integer.backends import check_recipe

        recipe = cfg.recipe
        resolved = resolved if resolved is not None else OmegaConf.to_container(cfg, resolve=True)
        calibration = effective_calibration(cfg)
        qat = None
        if enabled(recipe, "qat"):
            from ..train.qat import hyperparameters

            qat = hyperparameters(recipe.qat)
        objective = recipe.get("train_objective")
        spec = cls(recipe=str(recipe.name), quant=quant_config(resolved["recipe"], calibration),
                   calibration=calibration, steps=PostWeightSteps.from_recipe(recipe),
                   training=training_quant(recipe), qat=qat,
                   train_objective=dict(objective) if objective else None, backend=backend_name(cfg))
        spec.check_enables_something()
        check_recipe(spec.backend, spec.quant, spec.recipe, spec.steps.bcq is not None)
        return spec

    @property
    def is_fp32(self) -> bool:
        return self.recipe == FP32["name"]

    @property
    def ptq_groups_on(self) -> list[str]:
        """The quant groups (weights, activations, inputs) a post-training calibration enables by default."""
        from ..quant.sites import GROUPS

        return [g for g in GROUPS if (self.quant.get(g) or {}).get("enabled")]

    def check_enables_something(self) -> None:
        """A recipe other than ``fp32`` that turns no group and no site rule on (and does not quantize training) would
        score as a perfect quantization: refused before anything loads (issue 14 #2)."""
        if self.is_fp32 or self.training is not None:
            return
        rules_on = any(rule.get("enabled") is True for rule in self.quant.get("sites") or [])
        if not (self.ptq_groups_on or rules_on):
            raise NoOpRecipeError(f"recipe {self.recipe!r} quantizes nothing: recipe.quant.weights, .activations and "
                                  f".inputs are all disabled and no site rule enables a site; for a floating-point "
                                  f"run use recipe fp32 (or no recipe)")

    def check_quantizes(self, model) -> None:
        """The loaded model's half of the guard: a rule such as ``{match: "*", enabled: false}`` leaves every site in
        floating point."""
        if self.is_fp32 or self.training is not None:
            return
        from ..quant.sites import quantizers

        if not any(q.spec.enabled for q in quantizers(model)):
            raise NoOpRecipeError(f"recipe {self.recipe!r} quantizes nothing: every site of this model is left in "
                                  f"floating point (check recipe.quant.*.enabled and its site rules); for a "
                                  f"floating-point run use recipe fp32 (or no recipe)")
