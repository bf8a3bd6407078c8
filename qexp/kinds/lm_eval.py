"""Zero-shot accuracy with EleutherAI's lm-evaluation-harness (the hub's tasks, or local copies of them)."""
from __future__ import annotations

from ..tasks.texts import read_text
from .base import Evaluation, register
from .lm import LanguageModelKind


@register
class LMEval(LanguageModelKind):
    name = "lm_eval"

    def calibration_text(self) -> str:
        return read_text(self.task.calibration_source)

    def evaluate(self, model) -> Evaluation:
        from ..tasks import zeroshot

        task = self.task
        metrics = zeroshot.evaluate(model.hf_model, self.loaded.tokenizer, task, self.ctx.device, self.ctx.progress)
        source = f"lm_eval:{','.join(task.tasks)}" + (f"@{task.data_dir}" if task.get("data_dir") else "")
        return Evaluation(metrics, zeroshot.score(metrics, task), source)
