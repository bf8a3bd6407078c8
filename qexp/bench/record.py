"""A benchmark record: ``results/bench/<kind>__<device>__<time>.json`` (atomic), with the device, the CPU, versions and
the git commit (:mod:`qexp.common.provenance`), read by :mod:`qexp.report.gemm` and the memory figures."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..common import provenance

BENCH_SCHEMA = 1  # results/bench/*.json (read by qexp.report.gemm)


class BenchError(RuntimeError):
    pass


def write_record(result: dict, out_dir: Path, device: str) -> Path:
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    stamp = provenance.now().replace(":", "").replace("+0000", "Z")
    name = f"{result['kind']}__{re.sub(r'[^A-Za-z0-9]+', '_', gpu)}__{stamp}.json"
    rec = {"schema": BENCH_SCHEMA, "bench": result,
           "device": {"type": device, "gpu": gpu if device == "cuda" else None, "cpu": provenance.cpu_info()},
           "finished": provenance.now(), "git": provenance.git_state(), "versions": provenance.versions()}
    path = Path(out_dir) / name
    provenance.write_atomic(path, rec)
    return path
