"""The optional steps between weight and activation calibration (``calibrate(after_weights=...)``): binary-coding
quantization (recipe key ``bcq``), AdaRound (``adaround``), then LKD (``lkd``).  Options are checked when the steps are built, before any
model loads; each step's report is kept on the :class:`PostWeightSteps` object for the record."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..config.quant import enabled
from ..quant.adaround import AdaRoundConfig
from ..quant.bcq_step import BCQConfig
from ..train.lkd import LKDConfig


@dataclass
class PostWeightSteps:
    adaround: AdaRoundConfig | None
    lkd: LKDConfig | None
    options: dict                                   # the recipe's own options, as written, for the record
    reports: dict = field(default_factory=dict)     # record key -> report, filled as the steps run
    bcq: BCQConfig | None = None

    @classmethod
    def from_recipe(cls, recipe) -> "PostWeightSteps":
        options = {k: dict(recipe[k]) for k in ("bcq", "adaround", "lkd") if enabled(recipe, k)}
        bits = ((recipe.get("quant") or {}).get("weights") or {}).get("bits", 8)
        return cls(AdaRoundConfig.from_config(options["adaround"]) if "adaround" in options else None,
                   LKDConfig.from_config(options["lkd"]) if "lkd" in options else None, options,
                   bcq=BCQConfig.from_config(options["bcq"], bits) if "bcq" in options else None)

    def hook(self, kind):
        """The ``after_weights`` callable for :func:`qexp.quant.calibrate.calibrate`, or None when no step is on.
        ``kind`` (a loaded :class:`qexp.kinds.base.TaskKind`) supplies the data."""
        if self.adaround is None and self.lkd is None and self.bcq is None:
            return None
        adaround_batches = kind.adaround_batches(self.adaround.num_samples) if self.adaround else None

        def run(model) -> None:
            if self.bcq is not None:
                from ..quant.bcq_step import apply_bcq

                t0 = time.perf_counter()
                layers = apply_bcq(model, self.bcq, kind.ctx.progress)
                self.reports["bcq"] = {"config": self.options["bcq"], "layers": layers,
                                       "seconds": round(time.perf_counter() - t0, 3)}
            if self.adaround is not None:
                self.reports["adaround"] = {"config": self.options["adaround"],
                                            "layers": self._adaround(model, adaround_batches, kind)}
            if self.lkd is not None:
                self.reports["lkd"] = self._lkd(model, kind)

        return run

    def _adaround(self, model, batches, kind) -> list[dict]:
        from ..quant.adaround import apply_adaround

        return apply_adaround(model, batches, self.adaround, kind.ctx.seed, kind.ctx.progress)

    def _lkd(self, model, kind) -> dict:
        import torch

        from ..tasks import perplexity
        from ..tasks.texts import read_text
        from ..train.lkd import apply_lkd, random_token_sampler, window_sampler

        cfg, ctx, tokenizer = self.lkd, kind.ctx, kind.loaded.tokenizer
        length = int(cfg.seq_length or kind.lkd_length())
        if cfg.data == "task":
            sampler = kind.lkd_sampler(length)
        elif cfg.data == "random":
            sampler = random_token_sampler(len(tokenizer), length, ctx.device)
        else:
            sampler = window_sampler(perplexity.tokenize(tokenizer, read_text(cfg.text_file)), length, ctx.device)
        g_train, g_eval = torch.Generator().manual_seed(ctx.seed + 2), torch.Generator().manual_seed(ctx.seed + 3)

        def batches():
            while True:
                yield sampler(cfg.batch_size, g_train)

        held_out = [sampler(cfg.batch_size, g_eval) for _ in range(cfg.eval_batches)]
        t0 = time.perf_counter()
        blocks = apply_lkd(model, model.blocks, batches, held_out, cfg, ctx.seed, ctx.progress)
        return {"config": self.options["lkd"], "seq_length": length, "seconds": round(time.perf_counter() - t0, 2),
                "blocks": blocks}
