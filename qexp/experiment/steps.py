"""The optional steps between weight and activation calibration (``calibrate(after_weights=...)``): binary-coding
quantization (recipe key ``bcq``), AdaRound (``adaround``), then LKD (``lkd``).  Options are checked when the steps are built, before any
model loads; each step's report is kept on the :class:`PostWeightSteps` object for the record."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..config.quant import enabled
from ..quant.adaround import AdaRoundConfig
from ..quant.bcq import BCQError
from ..quant.bcq_step import BCQConfig
from .bcq_search import SearchConfig, load_params
from ..train.lkd import LKDConfig


def check_group_size(bcq: BCQConfig | None, model_cfg) -> None:
    """Refuse a BCQ ``group_size`` that does not divide the rows of the model's block linears before anything loads
    (or fine-tunes), where the model config tells the row lengths (:func:`qexp.models.loading.linear_row_lengths`);
    elsewhere, and for a narrowed ``recipe.bcq.sites``, the quantizer's own check after loading applies."""
    import math

    from ..models.loading import linear_row_lengths

    if bcq is None or bcq.group_size is None or bcq.sites != BCQConfig.sites or bcq.group_dim != "row":
        return
    lengths, g = linear_row_lengths(model_cfg), int(bcq.group_size)
    if lengths and any(n % g for n in lengths.values()):
        common = math.gcd(*lengths.values())
        divisors = [d for d in range(1, common + 1) if common % d == 0]
        raise BCQError(f"recipe.bcq.group_size={g} does not divide the row lengths of model {model_cfg.get('name')!r} "
                       f"(row lengths: {', '.join(f'{k} {n}' for k, n in lengths.items())}); valid: null (one "
                       f"row) or a divisor of every row length: {', '.join(map(str, divisors))}")


@dataclass
class PostWeightSteps:
    adaround: AdaRoundConfig | None
    lkd: LKDConfig | None
    options: dict                                   # the recipe's own options, as written, for the record
    reports: dict = field(default_factory=dict)     # record key -> report, filled as the steps run
    bcq: BCQConfig | None = None
    bcq_search: SearchConfig = SearchConfig()
    bcq_params: dict | None = None                  # recipe.bcq.params_from: per-layer E, C, P of an earlier search

    @classmethod
    def from_recipe(cls, recipe) -> "PostWeightSteps":
        options = {k: dict(recipe[k]) for k in ("bcq", "adaround", "lkd") if enabled(recipe, k)}
        bits = ((recipe.get("quant") or {}).get("weights") or {}).get("bits", 8)
        bcq = options.get("bcq") or {}
        search = SearchConfig.from_config(bcq.get("search"))
        params = load_params(str(bcq["params_from"])) if bcq.get("params_from") else None
        if search.enabled and params is not None:
            raise ValueError("recipe.bcq.search.mode and recipe.bcq.params_from exclude each other: a search finds "
                             "the per-layer settings, params_from reloads them; set one of them")
        bcq_cfg = None
        if "bcq" in options:
            # BCQ quantizes each weight site with that site's own bits (issue 26): check every bit width the weight
            # group and the weight site rules set, not only the group's
            rules = (recipe.get("quant") or {}).get("sites") or []
            widths = [bits, *(r.get("bits") for r in rules if str(r.get("match", "")).endswith(".weight")
                              and r.get("bits") is not None)]
            for b in dict.fromkeys(widths):
                bcq_cfg = BCQConfig.from_config(bcq, b)
            bcq_cfg = BCQConfig.from_config(bcq, bits)
        return cls(AdaRoundConfig.from_config(options["adaround"]) if "adaround" in options else None,
                   LKDConfig.from_config(options["lkd"]) if "lkd" in options else None, options,
                   bcq=bcq_cfg, bcq_search=search, bcq_params=params)

    def hook(self, kind):
        """The ``after_weights`` callable for :func:`qexp.quant.calibrate.calibrate`, or None when no step is on.
        ``kind`` (a loaded :class:`qexp.kinds.base.TaskKind`) supplies the data."""
        if self.adaround is None and self.lkd is None and self.bcq is None:
            return None
        adaround_batches = kind.adaround_batches(self.adaround.num_samples) if self.adaround else None

        def run(model) -> None:
            if self.bcq is not None:
                self.reports["bcq"] = self._bcq(model, kind)
            if self.adaround is not None:
                self.reports["adaround"] = {"config": self.options["adaround"],
                                            "layers": self._adaround(model, adaround_batches, kind)}
            if self.lkd is not None:
                self.reports["lkd"] = self._lkd(model, kind)

        return run

    def _bcq(self, model, kind) -> dict:
        from ..quant.bcq_step import apply_bcq

        t0 = time.perf_counter()
        report = {"config": self.options["bcq"]}
        if self.bcq_search.enabled:
            from pathlib import Path

            from ..experiment.records import write_atomic
            from .bcq_search import search

            cfg, rid = kind.ctx.cfg, kind.ctx.run_id
            found = search(model, self.bcq, self.bcq_search, kind, Path(cfg.cache_dir) / "bcq_search" /
                           f"{rid}.journal", rid, self.options["bcq"].get("manual_sets"), kind.ctx.progress)
            out = Path(cfg.results_dir) / "bcq_search" / f"{rid}.json"
            write_atomic(out, {"run_id": rid, "model": cfg.model.name, "task": cfg.task.name,
                               "recipe": kind.ctx.spec.recipe, "bits": self.bcq_quant_bits(model),
                               "layers": found["best"]["layers"], "best": found["best"]})
            report.update(layers=found.pop("layers"), search={**found, "params_file": str(out)})
        else:
            report["layers"] = apply_bcq(model, self.bcq, kind.ctx.progress, self.bcq_params)
        report["seconds"] = round(time.perf_counter() - t0, 3)
        return report

    @staticmethod
    def bcq_quant_bits(model) -> list[int]:
        from ..quant.modules import QLinear

        return sorted({m.weight_quantizer.spec.bits for m in model.modules()
                       if isinstance(m, QLinear) and m.weight_quantizer.spec.enabled})

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
        g_train = torch.Generator().manual_seed(kind.stream_seed("lkd_train"))
        g_eval = torch.Generator().manual_seed(kind.stream_seed("lkd_eval"))

        def batches():
            while True:
                yield sampler(cfg.batch_size, g_train)

        held_out = [sampler(cfg.batch_size, g_eval) for _ in range(cfg.eval_batches)]
        t0 = time.perf_counter()
        blocks = apply_lkd(model, model.blocks, batches, held_out, cfg, ctx.seed, ctx.progress)
        return {"config": self.options["lkd"], "seq_length": length, "seconds": round(time.perf_counter() - t0, 2),
                "blocks": blocks}
