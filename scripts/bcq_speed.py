"""Kwon et al. 2021, issue 13's speed targets: time BCQ (Alternating, 15 rounds, 3 bits, E = 1) of every block linear of
the real MiniLM-L6 (36 matrices, 10.6M weights) or SmolLM2-135M (210 matrices, 106M weights) on the CPU.

    python scripts/bcq_speed.py --model minilm --threads 1 [--rounds 2] [--compare OLD_bcq.py]

``--compare`` times another version of ``qexp/quant/bcq.py`` (e.g. ``git show REV:qexp/quant/bcq.py > /tmp/old.py``)
interleaved with the current one, round by round, and prints both sums of squared errors (they differ only by float
summation order).  Run it on a quiet machine: the times are wall clock."""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time

import torch


def weights(model: str) -> list[torch.Tensor]:
    from qexp.config.compose import compose
    from qexp.models.loading import load_model

    name, task, prefix = {"minilm": ("minilm_l6", "rte", "encoder.layer."),
                          "smollm2": ("smollm2_135m", "wikitext2", ".layers.")}[model]
    cfg = compose([f"model={name}", f"task={task}"])
    hf = load_model(cfg.model, num_labels=2, seed=0) if task == "rte" else load_model(cfg.model, seed=0)
    return [m.weight.detach().float() for n, m in hf.model.named_modules()
            if isinstance(m, torch.nn.Linear) and prefix in n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["minilm", "smollm2"], default="minilm")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1, help="timing rounds (each times every version once)")
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--compare", help="path of another bcq.py to time beside the current one")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from qexp.quant import bcq

    versions = [("current", bcq)]
    if a.compare:
        spec = importlib.util.spec_from_file_location("bcq_compare", a.compare)
        other = importlib.util.module_from_spec(spec)
        sys.modules["bcq_compare"] = other   # dataclasses look their module up
        spec.loader.exec_module(other)
        versions.insert(0, ("compare", other))
    ws = weights(a.model)
    print(f"{a.model}: {len(ws)} matrices, {sum(w.numel() for w in ws) / 1e6:.1f}M weights, {a.threads} thread(s)")
    for r in range(a.rounds):
        for name, mod in versions:
            q = mod.BCQ(a.bits, 15, None, mod.Importance(1.0, 1.0, 0.0), "cg")
            t0, err = time.perf_counter(), 0.0
            for w in ws:
                w_hat, _, _ = q.quantize(w)
                err += float(((w - w_hat) ** 2).sum())
            print(f"round {r}: {name:8s} {time.perf_counter() - t0:7.2f} s   sum of squared errors {err:.6g}",
                  flush=True)


if __name__ == "__main__":
    main()
