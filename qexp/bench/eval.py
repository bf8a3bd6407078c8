"""``qexp bench eval``: one experiment's evaluation timed on each inference backend, side by side in one process.

The model is loaded and calibrated once, by the run's own pipeline (the same recipe, calibration and post-weight
steps).  Then its evaluation runs in full precision (every quantizer off: the FP32 model) and on each backend named,
interleaved round by round, so each backend's median wall time and its ratio to FP32 come from one process on a
machine in one state (sequential ``qexp run``s drift with the machine's load).  Each pass's score is recorded too:
an integer backend that does not score as ``torch_int`` does is a bug, and the record says whether they agree.

The record (``results/bench/eval__cpu__<time>.json``) carries the resolved config, the backends' own descriptions
(``cpu_int8``: which GEMM path and ISA ran), the threads, the CPU, versions and git commit."""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

FLOAT = "fp32"


class BenchEvalError(ValueError):
    pass


def _passes(backends: list[str]) -> list[str]:
    from ..integer.backends import BACKENDS

    order = [FLOAT]
    for b in backends:
        if b == FLOAT:
            continue
        if b not in BACKENDS.names():
            raise BenchEvalError(f"--backend {b!r} is not an inference backend; valid: {FLOAT} (every quantizer off), "
                                 f"{', '.join(BACKENDS.names())}")
        if b not in order:
            order.append(b)
    if len(order) < 2:
        raise BenchEvalError(f"--backend: name at least one backend to time against {FLOAT}; valid: "
                             f"{', '.join(BACKENDS.names())}")
    return order


def bench_eval(overrides: list[str], backends: list[str], repeats: int = 2, threads: int | None = None,
               cwd: Path | None = None, progress: bool = True) -> dict:
    import torch
    from omegaconf import OmegaConf

    from ..config.compose import compose
    from ..integer.backends import attach, check_backend
    from ..quant.analysis import full_precision
    from ..experiment import pipeline

    if repeats < 1:
        raise BenchEvalError(f"--repeats {repeats}: must be at least 1")
    order = _passes(backends)
    if threads:
        torch.set_num_threads(int(threads))
    cfg = pipeline.prepare(compose(list(overrides)), Path(cwd or Path.cwd()), list(overrides))
    if cfg.recipe.name == "fp32":
        raise BenchEvalError("qexp bench eval times a quantized recipe's backends against FP32; name one, e.g. "
                             "+recipe=zq_w8a8")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    ctx, task, steps, _ = pipeline.validated(cfg, resolved, cwd)
    for b in order[1:]:
        check_backend(b, ctx.device)
    report: dict = {}
    loaded = pipeline.load_and_calibrate(ctx, task, steps, report)
    model = loaded.model
    passes, described = [], {}
    with torch.no_grad():
        for r in range(repeats):
            for name in order:
                described[name] = attach(model, "fake" if name == FLOAT else name)
                t0 = time.perf_counter()
                if name == FLOAT:
                    with full_precision(model):
                        result = task.evaluate(model)
                else:
                    result = task.evaluate(model)
                seconds = time.perf_counter() - t0
                passes.append({"round": r, "backend": name, "seconds": round(seconds, 4), "score": result.score})
                if progress:
                    print(f"round {r}: {name:10s} {seconds:8.2f} s  score {result.score}", flush=True)
    attach(model, "fake")
    median = {n: statistics.median(p["seconds"] for p in passes if p["backend"] == n) for n in order}
    scores = {n: sorted({p["score"] for p in passes if p["backend"] == n}, key=str) for n in order}
    out = {
        "kind": "eval", "model": cfg.model.name, "task": cfg.task.name, "recipe": cfg.recipe.name,
        "repeats": repeats, "threads": torch.get_num_threads(), "passes": passes, "median_s": median,
        "speedup_vs_fp32": {n: median[FLOAT] / median[n] for n in order[1:]},
        "scores": scores, "inference": {n: d for n, d in described.items() if n != FLOAT},
        "device": ctx.device, "config": resolved,
    }
    if "torch_int" in order:
        ref = scores["torch_int"]
        out["integer_backends_agree"] = {n: scores[n] == ref for n in order[1:] if n not in ("fake", "torch_int")}
    return out


def main(argv: list[str]) -> None:
    from .record import write_record

    ap = argparse.ArgumentParser(prog="qexp bench eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", action="append", help="repeatable: fake, torch_int, cpu_int8, cupy_int8 "
                                                       "(default: cpu_int8); FP32 always runs")
    ap.add_argument("--repeats", type=int, default=2, help="rounds; each runs every backend once (default 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("overrides", nargs="*", help="the run's Hydra overrides, e.g. +recipe=zq_w8a8 task=rte ...")
    a = ap.parse_args(argv)
    res = bench_eval(a.overrides, a.backend or ["cpu_int8"], a.repeats, a.threads)
    for n, x in res["speedup_vs_fp32"].items():
        print(f"{n}: {res['median_s'][n]:.2f} s vs {FLOAT} {res['median_s'][FLOAT]:.2f} s -> x{x:.2f}; "
              f"scores {res['scores'][n]} (fp32 {res['scores'][FLOAT]})")
    print(f"wrote {write_record(res, Path(a.out), 'cuda' if res['device'].startswith('cuda') else 'cpu')}")
