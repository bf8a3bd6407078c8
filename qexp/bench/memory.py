"""``qexp bench memory``: one measured training step beside the analytic memory model of :mod:`qexp.train.memory`
(Chitsaz et al. 2024, Appendix B)."""
from __future__ import annotations

import torch

from ..train.memory import GPT2, DecoderShape, analytic, grid, measure, savings, shape_of


def bench_memory(model_name: str = "gpt2_cpu", batch: int = 16, seq: int = 128, vocab: int = 4096,
                 device: str = "cpu") -> dict:
    """``qexp bench memory``: one measured training step of ``model_name`` beside the analytic model (fp32, eager
    attention), the analytic Figures 14/15 grid for GPT-2 small/medium/large as the paper trained (bf16 activations,
    fp32 parameters and states, FlashAttention), and what quantizing each component to 8 or 4 bits saves at the peak."""
    from ..config.compose import compose
    from ..models import scratch
    from ..models.families import family_of

    cfg = compose([f"model={model_name}"]).model
    hf = scratch.build(cfg, vocab, seq, {"pad_token_id": 0}, seed=0)
    model = family_of(cfg).wrap(hf).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(5, vocab, (batch, seq), generator=torch.Generator().manual_seed(0)).to(device)
    measured = measure(model, opt, {"input_ids": ids, "labels": ids})
    predicted = analytic(shape_of(hf), batch, seq)
    paper_kw = dict(param_bytes=4, act_bytes=2, grad_bytes=4, state_bytes=4, attention="flash")
    rows = grid(**paper_kw)
    quantized = []
    for name in GPT2:
        for b in (4, 32):
            a = analytic(DecoderShape.gpt2(name), b, 1024, **paper_kw)
            for bits in (8, 4):
                grad = paper_kw["act_bytes"] if a["peak_at"] == "backward start" else paper_kw["grad_bytes"]
                sv = savings(a["peak_components"], bits, {"parameters": paper_kw["param_bytes"], "gradients": grad,
                                                          "optimizer_states": paper_kw["state_bytes"],
                                                          "activations": paper_kw["act_bytes"]})
                quantized.append({"model": name, "batch": b, "seq": 1024, "bits": bits, "peak": a["peak"],
                                  "peak_at": a["peak_at"],
                                  **{f"saved_{k}": v for k, v in sv.items()},
                                  **{f"saved_{k}_pct": 100 * v / a["peak"] for k, v in sv.items()}})
    return {"kind": "memory", "model": model_name, "batch": batch, "seq": seq, "vocab": vocab, "device": device,
            "measured": measured, "analytic": {k: predicted[k] for k in measured if k in predicted},
            "grid": rows, "grid_precision": paper_kw, "quantized_savings": quantized}
