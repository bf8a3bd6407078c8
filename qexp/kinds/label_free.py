"""Label-free text (the default task): quantization error and outlier statistics of an encoder on real English."""
from __future__ import annotations

import torch

from ..models.families import family_of
from ..models.loading import load_model
from ..quant.sites import configure
from ..tasks import text_outliers
from .base import Evaluation, Loaded, TaskKind, register


@register
class LabelFree(TaskKind):
    name = "label_free"
    causal = False

    def lkd_fixed_length(self) -> int:
        return int(self.task.max_length)  # LKD on task data draws the calibration windows

    def load(self) -> Loaded:
        from transformers import set_seed

        set_seed(self.ctx.seed)
        hf = load_model(self.cfg.model, num_labels=None, seed=self.ctx.seed)
        model = family_of(self.cfg.model).wrap(hf.model).to(self.ctx.device).eval()
        configure(model, self.ctx.quant)
        self.cal_ids, self.eval_ids = text_outliers.split_windows(hf.tokenizer, self.task)
        self.loaded = Loaded(model, hf.tokenizer, hf.identity)
        return self.loaded

    def calibration_batches(self):
        cal, seed, device, ids = self.ctx.calibration, self.stream_seed("calibration"), self.ctx.device, self.cal_ids
        bs, n = int(cal.batch_size), int(cal.batch_size) * int(cal.num_batches)

        def batches():  # the same windows each call: the order is redrawn from the seed
            order = torch.randint(len(ids), (n,), generator=torch.Generator().manual_seed(seed))
            for i in range(0, n, bs):
                yield {"input_ids": ids[order[i:i + bs]].to(device)}

        return batches

    def adaround_batches(self, n: int):
        ids = self.cal_ids
        data = ids[torch.randint(len(ids), (n,), generator=torch.Generator().manual_seed(self.stream_seed("adaround")))]
        return lambda: ({"input_ids": data[i:i + 64].to(self.ctx.device)} for i in range(0, len(data), 64))

    def lkd_length(self) -> int:
        return int(self.task.max_length)

    def lkd_sampler(self, length: int):
        ids, device = self.cal_ids, self.ctx.device
        return lambda n, g: {"input_ids": ids[torch.randint(len(ids), (n,), generator=g)].to(device)}

    def evaluate(self, model) -> Evaluation:
        m = text_outliers.evaluate(model, self.eval_ids.to(self.ctx.device), int(self.task.eval_batch_size), self.bar)
        return Evaluation(m, 100.0 * m["final_rel_error"], f"text:{self.task.source}")
