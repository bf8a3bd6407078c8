"""Where a result came from, and how it is written: atomic JSON files, the git commit, package versions, the device.

Shared by run records (:mod:`qexp.experiment.records`) and benchmark records (:mod:`qexp.bench.record`).
"""
from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("qexp", "torch", "transformers", "datasets", "accelerate", "hydra-core", "numpy", "pandas", "scikit-learn",
            "scipy")


def write_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)   # mkstemp's 0600 would make shared result folders unreadable to others
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def portable(obj, root: Path = REPO):
    """``obj`` with every absolute path inside the checkout's parent folder written relative to the checkout
    (``/home/me/qexp/cache/x`` -> ``cache/x``, ``/home/me/shared/data`` -> ``../shared/data``): a record names paths as
    the user gives them, not one machine's layout (issue 27, "Also").  Other absolute paths (``/scratch/glue``) stay as
    they are; run ids never depend on either (data paths count by content, output folders not at all)."""
    base = str(Path(root).parent).rstrip("/") + "/"
    if isinstance(obj, dict):
        return {k: portable(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable(v, root) for v in obj]
    if isinstance(obj, str) and obj.startswith(base):
        return os.path.relpath(obj, root)
    return obj


@functools.lru_cache(maxsize=1)
def git_state() -> dict:
    """The commit and dirty flag of the checkout, read once per process: the code a process runs is the code it
    imported, so a sweep whose checkout moves on while it runs keeps naming the commit it started from (found when a
    campaign's later records named a commit whose code they had not run)."""
    return dict(_git_state())


def _git_state() -> dict:
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode:
            return {"commit": None, "dirty": None}
        status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")  # the ones INT8 speed depends on


def cpu_info() -> dict:
    """The CPU's model name and the INT8-relevant ISA flags (Linux /proc/cpuinfo; elsewhere platform's guess): CPU
    timings are comparable only on the same CPU, and whether an INT8 GEMM has VNNI changes them by 2x."""
    model, flags = platform.processor() or None, None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in (None, "", platform.machine()):
                model = value.strip()
            elif key.strip() == "flags" and flags is None:
                have = set(value.split())
                flags = [f for f in ISA_FLAGS if f in have]
    except OSError:
        pass
    return {"model": model, "isa_flags": flags, "logical_cpus": os.cpu_count()}


def device_info(device) -> dict:
    import torch

    info = {"type": str(device), "torch_threads": torch.get_num_threads(), "cpu": cpu_info()}
    if str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
