#!/usr/bin/env python3
"""Migration (issue 14 #1): run ids and GLUE fine-tuning cache keys hash the *content* of the data a run reads, not its
path.  Every record's id is recomputed from its own config (the data found at its recorded paths); a record whose id
changes is written under its new file name (atomically), keeps its old id in ``previous_run_ids``, and the old file is
removed.  A record whose data is not on this machine is left as it is (said on stderr).  With ``--cache``, each GLUE
fine-tuning checkpoint a record used is also copied to its content-keyed folder (the old folder stays: a job still
running under the old code keeps finding it).  Idempotent.

    python scripts/migrate_data_fingerprints.py [--runs results/runs] [--cache cache] [--dry-run]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from omegaconf import OmegaConf

from qexp.experiment.records import DATA_PATHS, record_path, run_id, write_atomic


def _data_present(cfg: dict) -> bool:
    from qexp.common.fingerprint import fingerprint

    def values(node, keys):
        if not isinstance(node, dict):
            return []
        head, rest = keys[0], keys[1:]
        names = list(node) if head == "*" else [head] if head in node else []
        return [v for n in names for v in (values(node[n], rest) if rest else [node[n]])]

    from qexp.tasks.texts import is_named

    paths = [v for keys in DATA_PATHS for v in values(cfg, keys) if isinstance(v, str) and v]
    return all(is_named(p) or fingerprint(p) is not None for p in paths)


def migrate(path: Path, dry_run: bool) -> Path | None:
    rec = json.loads(path.read_text())
    cfg = rec["config"]
    if not _data_present(cfg):
        print(f"{path.name}: its data is not on this machine; left as it is", file=sys.stderr)
        return None
    new = run_id(cfg)
    if rec.get("run_id") == new:
        return None
    rec["previous_run_ids"] = [*rec.get("previous_run_ids", []), rec.get("run_id")]
    rec["run_id"] = new
    target = record_path(path.parent, cfg)
    if target.exists() and target != path:
        if json.loads(target.read_text()) == rec:   # an interrupted migration: finish it
            if not dry_run:
                path.unlink()
            return target
        print(f"{path.name}: {target.name} already exists (the same run measured again); both kept", file=sys.stderr)
        return None
    if not dry_run:
        write_atomic(target, rec)
        if target != path:
            path.unlink()
    return target


def copy_checkpoint(rec: dict, cache: Path, dry_run: bool) -> Path | None:
    """The content-keyed folder of the fine-tuning checkpoint a GLUE record used, copied from its old folder."""
    from qexp.kinds.glue import finetune_folder

    old = ((rec.get("finetune") or {}).get("checkpoint"))
    if not old or not Path(old).is_dir():
        return None
    cfg = OmegaConf.create(rec["config"])
    cfg.cache_dir = str(cache.resolve())
    new = finetune_folder(cfg, rec["model_identity"])
    if new.exists() or Path(old).resolve() == new.resolve():
        return None
    if not dry_run:
        tmp = new.with_name(new.name + ".tmp-copy")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(old, tmp)
        tmp.rename(new)
    return new


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="results/runs")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args()
    moved = copied = 0
    for path in sorted(Path(a.runs).glob("*.json")):
        if a.cache:
            rec = json.loads(path.read_text())
            if rec["config"]["task"].get("kind") == "glue" and copy_checkpoint(rec, Path(a.cache), a.dry_run) is not None:
                copied += 1
        target = migrate(path, a.dry_run)
        if target is not None:
            moved += 1
            print(f"{path.name} -> {target.name}")
    verb = "would migrate" if a.dry_run else "migrated"
    print(f"{verb} {moved} record(s); {copied} fine-tuning checkpoint(s) copied to content keys", file=sys.stderr)


if __name__ == "__main__":
    main()
