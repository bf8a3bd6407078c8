#!/usr/bin/env python3
"""What the Q4_1 GGUF origin of SmolLM2-135M (model=smollm2_135m) does to 4-bit weight quantization (Kwon et al. 2021
issue): after dequantization every block of 32 consecutive weights of a linear layer holds at most 16 values
(scale * q + min, q in 0..15).  Counts the blocks with <= 16 distinct values over every block linear, and compares the
4-bit relative MSE (MSE / variance) of one layer under per-row uniform RTN, uniform RTN on the 32-blocks (exact on
this checkpoint), and BCQ (Alternating, 15 rounds) per row and per 32-group; also times 3-bit Alternating on every
block linear (issue 13's speed target: at most 2 minutes).  Writes results/bench/smollm2_gguf_levels.json.

    OMP_NUM_THREADS=2 python scripts/smollm2_gguf_levels.py [--layer 4] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def uniform_rel_mse(w: torch.Tensor, group: int, bits: int = 4) -> float:
    x = w.reshape(-1, group)
    lo, hi = x.min(1, keepdim=True).values, x.max(1, keepdim=True).values
    s = ((hi - lo) / (2 ** bits - 1)).clamp_min(1e-12)
    q = torch.clamp(torch.round((x - lo) / s), 0, 2 ** bits - 1) * s + lo
    return float(((q.reshape(w.shape) - w) ** 2).mean() / w.var())


def main() -> None:
    from qexp.config.compose import compose
    from qexp.models.loading import load_model
    from qexp.quant.bcq import BCQ

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", type=int, default=4, help="index of the block linear to compare methods on")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="results/bench/smollm2_gguf_levels.json")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    hf = load_model(compose(["model=smollm2_135m", "task=wikitext2"]).model, num_labels=None, seed=0)
    lin = [(n, m) for n, m in hf.model.named_modules() if isinstance(m, torch.nn.Linear) and "layers." in n]
    blocks = le16 = 0
    for _, m in lin:
        s = m.weight.detach().float().reshape(-1, 32).sort(1).values
        distinct = 1 + (s[:, 1:] != s[:, :-1]).sum(1)
        blocks += len(distinct)
        le16 += int((distinct <= 16).sum())
    name, m = lin[a.layer]
    w = m.weight.detach().float()
    bcq = {}
    for g in (None, 32):
        wh = BCQ(4, 15, g).quantize(w)[0]
        bcq["row" if g is None else "group32"] = float(((wh - w) ** 2).mean() / w.var())
    t0 = time.perf_counter()
    for _, mm in lin:
        BCQ(3, 15).quantize(mm.weight.detach().float())
    seconds = time.perf_counter() - t0
    out = {"linears": len(lin), "weights": sum(mm.weight.numel() for _, mm in lin), "blocks_of_32": blocks,
           "blocks_with_at_most_16_values": le16, "layer": name, "shape": list(w.shape),
           "rel_mse_4bit": {"uniform_row": uniform_rel_mse(w, w.shape[1]), "uniform_block32": uniform_rel_mse(w, 32),
                            "bcq_row": bcq["row"], "bcq_group32": bcq["group32"]},
           "bcq3_alternating_all_linears_seconds": round(seconds, 1), "threads": torch.get_num_threads()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
