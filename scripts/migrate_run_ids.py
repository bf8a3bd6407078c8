#!/usr/bin/env python3
"""One-off migration (issue 10): recipes no longer carry ``table_row`` (the table specs in qexp/report name their rows),
so the run id of every record written before that change is recomputed without it.

For each record in RUNS (default results/runs): drop ``config.recipe.table_row``, recompute the run id with
``qexp.experiment.records.run_id``, write the record under its new file name (atomically), keep the old id in
``previous_run_ids``, then remove the old file.  Idempotent: a record without ``table_row`` is left alone, and a run
interrupted between writing the new file and removing the old one resumes.

    python scripts/migrate_run_ids.py [--runs results/runs] [--dry-run]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qexp.experiment.records import record_path, run_id, write_atomic


def migrate(path: Path, dry_run: bool) -> Path | None:
    rec = json.loads(path.read_text())
    recipe = (rec.get("config") or {}).get("recipe") or {}
    if "table_row" not in recipe:
        return None
    old = rec.get("run_id")
    if old is not None and old != run_id(rec["config"]):
        raise SystemExit(f"{path}: its run_id {old} is not the id of its own config; not touching it")
    recipe.pop("table_row")
    new = run_id(rec["config"])
    rec["run_id"] = new
    rec["previous_run_ids"] = [*rec.get("previous_run_ids", []), old]
    target = record_path(path.parent, rec["config"])
    if target.exists() and target != path:
        if json.loads(target.read_text()) == rec:  # an interrupted migration wrote it and stopped before the unlink
            if not dry_run:
                path.unlink()
            return target
        raise SystemExit(f"{path}: {target.name} already exists and differs; resolve the duplicate by hand")
    if not dry_run:
        write_atomic(target, rec)
        if target != path:
            path.unlink()
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="results/runs")
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args()
    moved = 0
    for path in sorted(Path(a.runs).glob("*.json")):
        target = migrate(path, a.dry_run)
        if target is not None:
            moved += 1
            print(f"{path.name} -> {target.name}")
    print(f"{'would migrate' if a.dry_run else 'migrated'} {moved} record(s)", file=sys.stderr)


if __name__ == "__main__":
    main()
