"""The shared start of the language-model kinds: a decoder, calibrated on windows of a calibration text."""
from __future__ import annotations

import torch

from ..models.families import family_of
from ..models.loading import load_model
from ..quant.sites import configure
from ..tasks import perplexity
from ..train.lkd import window_sampler
from .base import KindError, Loaded, TaskKind


def max_positions(config) -> int | None:
    for key in ("max_position_embeddings", "n_positions"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    return None


class LanguageModelKind(TaskKind):
    """Not registered itself: :mod:`.perplexity` and :mod:`.lm_eval` say where the calibration text comes from."""
    causal = True
    searches = True

    def check_search_data(self) -> None:
        files = self.task.get("files") or {}
        hub = self.task.get("hub") or {}
        same = (files.get("eval") and files.get("eval") == files.get("calibration") if self.task.get("data_dir")
                else hub.get("eval_split") and hub.get("eval_split") == hub.get("calibration_split"))
        if same:
            raise KindError(f"recipe.bcq.search on task {self.task.name!r}: its calibration text is its evaluation "
                            f"text, so the search objective would see the evaluated data; give the task another "
                            f"calibration split (task.files.calibration / task.hub.calibration_split)")

    def calibration_text(self) -> str:
        raise NotImplementedError

    def load(self) -> Loaded:
        from transformers import set_seed

        from ..common import dist

        set_seed(self.ctx.seed)
        with dist.main_first():   # a hub download once; the other ranks read the hub cache
            hf = load_model(self.cfg.model, num_labels=None, seed=self.ctx.seed)
        model = family_of(self.cfg.model).wrap(hf.model)
        configure(model, self.ctx.quant)
        model = model.to(self.ctx.device).eval()
        self.cal_ids = perplexity.tokenize(hf.tokenizer, self.calibration_text())
        self.loaded = Loaded(model, hf.tokenizer, hf.identity)
        return self.loaded

    def calibration_length(self) -> int:
        """``calibration.seq_length`` (else the task's context length, else 512), capped by the model's positions and
        the calibration text."""
        length = int(self.ctx.calibration.get("seq_length") or self.task.get("context_length") or 512)
        return min(length, max_positions(self.loaded.model.config) or length, self.cal_ids.shape[1])

    def calibration_batches(self):
        cal, seed, device = self.ctx.calibration, self.stream_seed("calibration"), self.ctx.device
        bs, nb, length = int(cal.batch_size), int(cal.num_batches), self.calibration_length()

        def batches():
            g = torch.Generator().manual_seed(seed)
            for _ in range(nb):
                yield {"input_ids": perplexity.random_windows(self.cal_ids, bs, length, g).to(device)}

        return batches

    def adaround_batches(self, n: int):
        data = perplexity.random_windows(self.cal_ids, n, self.calibration_length(),
                                         torch.Generator().manual_seed(self.stream_seed("adaround")))
        return lambda: ({"input_ids": data[i:i + 8].to(self.ctx.device)} for i in range(0, n, 8))

    def objective_data(self, n: int):
        """``n`` windows of the calibration text (the task's training text where it has one; for the local
        WikiText-2/PTB files the validation split, never the test split that is evaluated)."""
        return perplexity.random_windows(self.cal_ids, n, self.calibration_length(),
                                         torch.Generator().manual_seed(self.stream_seed("objective")))

    def objective(self, model, data) -> dict:
        """Mean next-token cross-entropy over the windows (the perplexity module's batched evaluation of the windows
        laid end to end: every token but each window's first is scored), and its perplexity; a trial whose logits are
        not finite scores inf instead of stopping the search."""
        try:
            nll = perplexity.evaluate_batched(model, data.reshape(1, -1), int(data.shape[1]), self.ctx.device,
                                              batch_size=8)["nll"]
        except FloatingPointError:
            nll = float("inf")
        return {"loss": nll, "metric": perplexity.perplexity_of(nll), "metric_name": "perplexity",
                "higher_is_better": False, "n": int(data.shape[0])}

    def lkd_length(self) -> int:
        return self.calibration_length()

    def lkd_sampler(self, length: int):  # windows of the calibration text
        return window_sampler(self.cal_ids, min(length, self.cal_ids.shape[1]), self.ctx.device)
