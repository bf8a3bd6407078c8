"""Run records: one self-describing JSON file per run, written atomically (STYLE 10).

The run id is a hash of the resolved config without operational keys (paths, force, progress), so re-running the
same (config, seed) finds its record and skips, which is how an interrupted sweep resumes.  A record is written to a
temporary file in the same folder and renamed into place: readers never see half a record and a crash leaves none.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

SCHEMA = 1
OPERATIONAL_KEYS = ("force", "results_dir", "cache_dir", "progress", "device")
REPO = Path(__file__).resolve().parents[1]


def identity(cfg: dict) -> dict:
    """The keys that define a run.  ``inference.backend=fake`` (the default, fake quantization) is left out, so the
    records written before the integer backends existed keep their ids; an integer backend is part of the identity."""
    out = {k: v for k, v in cfg.items() if k not in OPERATIONAL_KEYS}
    if (out.get("inference") or {}).get("backend", "fake") == "fake":
        out.pop("inference", None)
    return out


def run_id(cfg: dict) -> str:
    blob = json.dumps(identity(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


def record_path(results_dir: Path, cfg: dict) -> Path:
    recipe = (cfg.get("recipe") or {}).get("name", "fp32")
    name = f"{cfg['model']['name']}__{cfg['task']['name']}__{recipe}__seed{cfg['seed']}__{run_id(cfg)}.json"
    return Path(results_dir) / name


def write_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def git_state() -> dict:
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
    for pkg in ("qexp", "torch", "transformers", "datasets", "accelerate", "hydra-core", "numpy", "pandas",
                "scikit-learn", "scipy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def device_info(device) -> dict:
    import torch

    info = {"type": str(device), "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or None}
    if str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_records(results_dir: Path) -> list[dict]:
    out = []
    for p in sorted(Path(results_dir).glob("*.json")):
        with open(p) as f:
            rec = json.load(f)
        if rec.get("schema") == SCHEMA:
            rec["_path"] = str(p)
            out.append(rec)
    return out
