"""Where this process stands in a multi-process launch (issue 30): ``torchrun``, ``accelerate launch`` or SLURM.

qexp's rule for every step that is not data-parallel training: the main process does it first (data preparation,
tokenizer training, caches) or alone (checkpoints, the final model, records, tables), the others wait at a barrier
and read what it wrote.  Training itself is data-parallel through the HF Trainer (Accelerate/DDP).  Nothing here
imports torch unless a process group is needed.

The launchers' environments: torchrun and accelerate set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``; SLURM (``srun``, one task per GPU) sets ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID`` and the
node list, which :func:`from_slurm` translates (the first node of the job is the master).
"""
from __future__ import annotations

import contextlib
import os
import re


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def is_main() -> bool:
    return rank() == 0


def distributed() -> bool:
    return world_size() > 1


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compact node list as host names: ``gpu[01-03,07],cpu5`` -> gpu01, gpu02, gpu03, gpu07, cpu5."""
    hosts = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?", nodelist):
        m = re.fullmatch(r"(.*)\[(.*)\]", part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges = m.groups()
        for r in ranges.split(","):
            lo, _, hi = r.partition("-")
            for i in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{i:0{len(lo)}d}")
    return hosts


def from_slurm(env: dict | None = None) -> dict:
    """The torchrun-style variables of a SLURM task (empty when not under SLURM or when they are already set)."""
    env = dict(os.environ if env is None else env)
    if "RANK" in env or "SLURM_PROCID" not in env or int(env.get("SLURM_NTASKS", "1")) <= 1:
        return {}
    nodes = expand_nodelist(env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "localhost")
    return {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_NTASKS"],
            "LOCAL_RANK": env.get("SLURM_LOCALID", "0"), "MASTER_ADDR": env.get("MASTER_ADDR", nodes[0]),
            "MASTER_PORT": env.get("MASTER_PORT", str(29500 + int(env.get("SLURM_JOB_ID", "0")) % 1000))}


def init() -> None:
    """Under a multi-process launch, the process group (gloo on a CPU, nccl with CUDA), once, before anything else
    needs a barrier; the HF Trainer finds it initialised and uses it."""
    os.environ.update(from_slurm())
    if not distributed():
        return
    import torch
    import torch.distributed as torch_dist

    if not torch.cuda.is_available():
        # a CPU process group makes Accelerate put the model on torch.device("cpu", rank): the checkpoints it saves
        # are tagged "cpu:N", which torch.load cannot restore (found resuming a killed 2-process run); they are CPU
        # storages, restored as such
        torch.serialization.register_package(11, lambda obj: None,
                                             lambda obj, loc: obj if str(loc).startswith("cpu:") else None)
    if not torch_dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch_dist.init_process_group(backend=backend)


def barrier() -> None:
    if distributed():
        import torch.distributed as torch_dist

        if torch_dist.is_initialized():
            torch_dist.barrier()


@contextlib.contextmanager
def main_first():
    """The main process runs the block first (and writes its caches); the others run it after, reading them."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def from_main(value):
    """The main process's ``value`` on every rank (a decision all must share, e.g. whether a cache entry exists when
    another job may be writing it); ``value`` itself under one process."""
    if not distributed():
        return value
    import torch.distributed as torch_dist

    box = [value]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(value: float) -> float:
    """The mean of a number over the ranks (``value`` under one process).  The HF Trainer's ``training_loss`` sums each
    rank's own step losses between logging steps, so under DDP it is one rank's view until it is averaged here."""
    if not distributed():
        return value
    import torch
    import torch.distributed as torch_dist

    t = torch.tensor([float(value)], dtype=torch.float64)
    torch_dist.all_reduce(t)
    return float(t.item()) / world_size()


def describe() -> dict:
    return {"world_size": world_size(), "rank": rank()}
