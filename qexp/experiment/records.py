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


# the config keys that name data a run reads: the run id hashes their content, not their path (issue 14 #1)
DATA_PATHS = (("task", "data_dir"), ("task", "heldout", "*", "data_dir"), ("task", "downstream", "data_dir"),
              ("task", "calibration_source"), ("recipe", "lkd", "text_file"), ("recipe", "bcq", "params_from"))


def _with_content(node, keys: tuple):
    """``node`` with the value at ``keys`` ("*": every entry) replaced by its content fingerprint, where it exists."""
    from ..common.fingerprint import fingerprint

    if not isinstance(node, dict):
        return node
    head, rest = keys[0], keys[1:]
    names = list(node) if head == "*" else [head] if head in node else []
    out = dict(node)
    for name in names:
        if rest:
            out[name] = _with_content(node[name], rest)
        elif isinstance(node[name], str) and node[name]:
            fp = fingerprint(node[name])
            if fp is not None:
                out[name] = {"content": fp}
    return out


def identity(cfg: dict) -> dict:
    """The keys that define a run.  ``inference.backend=fake`` (the default, fake quantization) is left out, so the
    records written before the integer backends existed keep their ids; an integer backend is part of the identity.
    Data paths count by their content (:data:`DATA_PATHS`): the record keeps the path, the id does not depend on it."""
    out = {k: v for k, v in cfg.items() if k not in OPERATIONAL_KEYS}
    if (out.get("inference") or {}).get("backend", "fake") == "fake":
        out.pop("inference", None)
    for keys in DATA_PATHS:
        out = _with_content(out, keys)
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
