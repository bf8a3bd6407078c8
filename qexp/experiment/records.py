"""Run records: one self-describing JSON file per run, written atomically (STYLE 10).

The run id is a hash of the resolved config without operational keys (paths, force, progress), so re-running the
same (config, seed) finds its record and skips, which is how an interrupted sweep resumes.  A record is written to a
temporary file in the same folder and renamed into place: readers never see half a record and a crash leaves none.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from ..common.provenance import device_info, git_state, now, versions, write_atomic  # noqa: F401  (the record's parts)

SCHEMA = 1
OPERATIONAL_KEYS = ("force", "results_dir", "cache_dir", "progress", "device")


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


REQUIRED = ("model", "task", "recipe", "seed", "config", "metrics")
log = logging.getLogger("qexp")


def load_records(results_dir: Path) -> list[dict]:
    """Every readable record of this schema; a file that is not one (truncated, another schema, keys missing) is
    skipped with a warning that names it, so one bad file never hides the others or stops a table."""
    out = []
    for p in sorted(Path(results_dir).glob("*.json")):
        try:
            with open(p) as f:
                rec = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            log.warning("skipping %s: not a readable JSON record (%s)", p, e)
            continue
        if not isinstance(rec, dict) or rec.get("schema") != SCHEMA:
            schema = rec.get("schema") if isinstance(rec, dict) else type(rec).__name__
            log.warning("skipping %s: record schema %r, this qexp reads schema %d (scripts/migrate_run_ids.py "
                        "migrates old records)", p, schema, SCHEMA)
            continue
        missing = [k for k in REQUIRED if k not in rec]
        if missing:
            log.warning("skipping %s: the record lacks %s", p, ", ".join(missing))
            continue
        rec["_path"] = str(p)
        out.append(rec)
    return out
