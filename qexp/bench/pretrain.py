"""``qexp bench pretrain``: the cost of clipped softmax and gated attention per training step, measured side by side.

One training step (forward, backward, AdamW update) of a from-scratch model config (default: the CPU presets
``bert_cpu`` with 16 x 128-token MLM batches, ``opt_cpu`` with 16 x 128-token CLM batches) for each attention variant,
the variants taking turns round by round (:func:`qexp.common.timing.time_cpu_interleaved`), so machine load hits
them alike.  Reports the median step time, tokens per second and the ratio to vanilla (Bondarenko et al. 2023 claim
the variants cost little; issue 11 asks for at most 10 %).
"""
from __future__ import annotations

import torch

from ..common.timing import time_cpu_interleaved
from ..config.compose import compose
from ..models import scratch
from ..models.families import family_of

VARIANTS = {"bert_cpu": ("vanilla", "clipped", "gated_mlp"), "opt_cpu": ("vanilla", "clipped_alpha", "gated_linear")}


def _step_fn(model_name: str, attention: str, batch: int, seq: int, vocab: int):
    cfg = compose([f"model={model_name}", f"model/attention={attention}"]).model
    hf = scratch.build(cfg, vocab, seq, {"pad_token_id": 0}, seed=0)
    model = family_of(cfg).wrap(hf).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (batch, seq), generator=g)
    if cfg.arch == "bert":
        labels = torch.where(torch.rand(batch, seq, generator=g) < 0.15, ids, torch.full_like(ids, -100))
    else:
        labels = ids

    def step(_i):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_pretrain(models=("bert_cpu", "opt_cpu"), batch: int = 16, seq: int = 128, repeats: int = 12,
                   inner: int = 2, threads: int | None = None) -> dict:
    if threads:
        torch.set_num_threads(int(threads))
    vocab = {"bert": 30522, "opt": 4096}
    rows = []
    for name in models:
        arch = compose([f"model={name}"]).model.arch
        fns = {att: _step_fn(name, att, batch, seq, vocab[arch]) for att in VARIANTS[name]}
        ms = time_cpu_interleaved(fns, repeats, inner, warmup=2)
        for att, t in ms.items():
            rows.append({"model": name, "attention": att, "ms_per_step": t, "tokens_per_s": batch * seq / t * 1e3,
                         "vs_vanilla": t / ms["vanilla"]})
    return {"kind": "pretrain_step", "batch": batch, "seq": seq, "repeats": repeats, "inner": inner,
            "threads": torch.get_num_threads(), "rows": rows}
