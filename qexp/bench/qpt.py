"""``qexp bench qpt``: the cost of quantized training per step, side by side with the floating-point step.

One training step (forward, backward, AdamW update) of ``gpt2_cpu`` (16 x 128-token CLM batches, BPE vocabulary 4096)
for the FP baseline and each qpt recipe (default: W8A8, W8A8G8, and Adam m1 at 8 bits per channel), the variants
taking turns round by round (:func:`qexp.common.timing.time_cpu_interleaved`) so machine load hits them alike.
Reports the median step time, tokens per second and the ratio to FP (issue 12's target: at most 1.5x on the CPU).
"""
from __future__ import annotations

import torch

from ..common.timing import time_cpu_interleaved
from ..config.compose import compose
from ..config.training_quant import training_quant
from ..models import scratch
from ..models.families import family_of
from ..quant.optim import QuantizedAdamW
from ..quant.training_linear import attach

RECIPES = ("qpt_w8a8", "qpt_w8a8g8", "qpt_m1_8_channel")


def _step_fn(model_name: str, recipe: str | None, batch: int, seq: int, vocab: int):
    cfg = compose([f"model={model_name}", "task=qpt_clm", *([f"+recipe={recipe}"] if recipe else [])])
    hf = scratch.build(cfg.model, vocab, seq, {"pad_token_id": 0}, seed=0)
    model = family_of(cfg.model).wrap(hf).train()
    tq = training_quant(cfg.recipe) if recipe else None
    if tq is not None:
        attach(model, tq.linear, list(tq.sites), list(tq.exclude_sites))
    opt = QuantizedAdamW(model.parameters(), m1=tq and tq.m1, m2=tq and tq.m2, lr=1e-4)
    ids = torch.randint(5, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))

    def step(_i):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_qpt(model: str = "gpt2_cpu", recipes=RECIPES, batch: int = 16, seq: int = 128, repeats: int = 12,
              inner: int = 2, threads: int | None = None) -> dict:
    if threads:
        torch.set_num_threads(int(threads))
    fns = {"fp32": _step_fn(model, None, batch, seq, 4096)}
    fns.update({r: _step_fn(model, r, batch, seq, 4096) for r in recipes})
    ms = time_cpu_interleaved(fns, repeats, inner, warmup=2)
    rows = [{"model": model, "recipe": r, "ms_per_step": t, "tokens_per_s": batch * seq / t * 1e3,
             "vs_fp32": t / ms["fp32"]} for r, t in ms.items()]
    return {"kind": "qpt_step", "batch": batch, "seq": seq, "repeats": repeats, "inner": inner,
            "threads": torch.get_num_threads(), "rows": rows}
