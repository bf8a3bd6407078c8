"""Language-model perplexity (WikiText-2, PTB, ...) with a sliding or disjoint context window."""
from __future__ import annotations

from ..tasks import perplexity
from .base import Evaluation, register
from .lm import LanguageModelKind, max_positions


@register
class Perplexity(LanguageModelKind):
    name = "perplexity"
    distributed = True   # LKD data-parallel; calibration and evaluation identical on every rank; the main one records

    def calibration_text(self) -> str:
        return perplexity.load_text(self.task, "calibration")

    def evaluate(self, model) -> Evaluation:
        task = self.task
        context = min(int(task.context_length), max_positions(model.config) or int(task.context_length))
        ids = perplexity.tokenize(self.loaded.tokenizer, perplexity.load_text(task, "eval"))
        m = perplexity.evaluate(model, ids, context, task.get("stride"), self.ctx.device, task.limit.get("windows"),
                                self.bar)
        m.update(context_length=context, calibration_seq_length=self.calibration_length())
        source = f"files:{task.data_dir}" if task.get("data_dir") else f"hub:{task.hub.path}/{task.hub.get('name')}"
        return Evaluation({"test": m}, m["perplexity"], source)
