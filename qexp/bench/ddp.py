"""``qexp bench ddp``: the training-step time of one global batch on this machine's cores -- 1 process x 1 thread,
1 process x N threads, N processes x 1 thread (torchrun, gloo on a CPU; DDP with the batch split as qexp's
distributed training splits it) -- measured side by side: the launches take turns round by round, so machine load hits
them alike (issue 30: reported, no target).

Each launch builds the same from-scratch model (``opt_cpu`` by default, dropout off), times ``--steps`` AdamW steps
after ``--warmup`` untimed ones, and its rank 0 writes the per-step times to a JSON file; the start-up (interpreter,
imports, process group) is not in the step time.  Written here because neither the Trainer nor Accelerate times a step
across launch configurations.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _worker(model_name: str, batch: int, seq: int, steps: int, warmup: int, out: str) -> None:
    import torch

    from ..common import dist
    from ..config.compose import compose
    from ..models import scratch
    from ..models.families import family_of

    dist.init()
    cfg = compose([f"model={model_name}", "model.dropout=0.0"]).model
    hf = scratch.build(cfg, 4096, seq, {"pad_token_id": 0}, seed=0)
    model = family_of(cfg).wrap(hf).train()
    world, rank = dist.world_size(), dist.rank()
    trained = model
    if dist.distributed():
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 4096, (batch, seq), generator=g)
    share = ids[rank * batch // world:(rank + 1) * batch // world]   # this rank's rows of the global batch
    labels = share if cfg.arch != "bert" else torch.where(torch.rand(share.shape, generator=g) < 0.15, share, -100)
    times = []
    for i in range(warmup + steps):
        dist.barrier()
        t0 = time.perf_counter()
        loss = trained(input_ids=share, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dist.barrier()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    if dist.is_main():
        Path(out).write_text(json.dumps({"times": times, "world_size": world,
                                         "threads": torch.get_num_threads()}))


def _launch(procs: int, threads: int, args, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    worker = ["-m", "qexp.bench.ddp", "--worker", args.model, str(args.batch), str(args.seq), str(args.steps),
              str(args.warmup), str(out)]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *worker]
           if procs > 1 else [sys.executable, *worker])
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if run.returncode != 0:
        raise RuntimeError(f"{procs} process(es) x {threads} thread(s) failed: {run.stderr[-1500:]}")
    return json.loads(out.read_text())


def bench_ddp(args) -> dict:
    """Side by side, ``args.rounds`` rounds: the median step time of each launch configuration and its ratio to 1 x 1."""
    n = int(args.procs)
    configs = [(1, 1), (1, n), (n, 1)]
    times: dict[tuple, list] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory(prefix="qexp-bench-ddp-") as tmp:
        for r in range(int(args.rounds)):
            for procs, threads in configs:
                res = _launch(procs, threads, args, Path(tmp) / f"r{r}_{procs}x{threads}.json")
                times[(procs, threads)] += res["times"]
    base = statistics.median(times[(1, 1)])
    rows = []
    for (procs, threads), t in times.items():
        med = statistics.median(t)
        rows.append({"processes": procs, "threads_per_process": threads, "median_step_s": med,
                     "tokens_per_s": args.batch * args.seq / med, "vs_1x1": med / base, "steps_timed": len(t)})
    return {"kind": "ddp_step", "model": args.model, "global_batch": args.batch, "seq": args.seq, "rows": rows,
            "note": "global batch split across the processes (DDP, gloo); one thread per process unless stated"}


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    m, b, s, st, w, o = sys.argv[2:8]
    _worker(m, int(b), int(s), int(st), int(w), o)
