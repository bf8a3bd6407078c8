#!/usr/bin/env python3
"""Bring every committed record to the current code's run ids and portable paths (issues 10, 27).

For each record in RUNS (default results/runs), in one pass:
  * drop ``config.recipe.table_row`` (issue 10: the table specs name their rows);
  * write the layer selectors in the one site-glob dialect (issue 26 #4: ``bcq.layers`` -> ``bcq.sites``,
    ``adaround.layers`` -> ``adaround.sites``, ``qpt.include``/``exclude`` -> ``qpt.sites``/``exclude_sites``);
  * write absolute paths inside the checkout's parent folder relative to the checkout (issue 27: records held one
    machine's layout, e.g. ``/work/main/cache``; now ``cache``, ``../shared/data/glue/RTE``);
  * recompute the run id with ``qexp.experiment.records.run_id`` (issue 27 #6: a data folder's fingerprint covers the
    files the task reads, not every file beside them);
then write the record under its new file name (atomically), keep the old id in ``previous_run_ids`` and remove the old
file.  Records that now share an id because they differed only in evaluation-only settings (issue 26 #2) become one
(:func:`merge_evaluations`).  Idempotent (a record already current is left alone) and resumable (a run interrupted between writing the new
file and removing the old one finishes the move).  Run it from the checkout (data fingerprints read the files).

    python scripts/migrate_run_ids.py [--runs results/runs] [--dry-run]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qexp.experiment.records import (evaluation_settings, portable, record_path, replacing, run_id,
                                     without_evaluation, write_atomic)
from qexp.quant.sites import weight_globs


def site_glob_selectors(recipe: dict) -> None:
    """Issue 26 #4, in place: the selector keys in the one site-glob dialect.  ``bcq.layers`` and ``qpt.include`` /
    ``exclude`` matched linear names (``encoder.layer.*``); ``bcq.sites``, ``qpt.sites`` / ``exclude_sites`` match the
    weight site (``encoder.layer.*.weight``: the same layers).  ``adaround.layers`` already matched weight sites."""
    bcq, ada, qpt = (recipe.get(k) for k in ("bcq", "adaround", "qpt"))
    if isinstance(bcq, dict) and "layers" in bcq:
        bcq["sites"] = weight_globs(bcq.pop("layers"))
    if isinstance(ada, dict) and "layers" in ada:
        layers = ada.pop("layers")
        ada["sites"] = [layers] if isinstance(layers, str) else list(layers)
    if isinstance(qpt, dict):
        if "include" in qpt:
            qpt["sites"] = weight_globs(qpt.pop("include"))
        if "exclude" in qpt:
            qpt["exclude_sites"] = weight_globs(qpt.pop("exclude"))


def current(rec: dict) -> dict:
    """The record as the current code writes it (without touching its results)."""
    rec = json.loads(json.dumps(rec))
    ((rec.get("config") or {}).get("recipe") or {}).pop("table_row", None)
    site_glob_selectors((rec.get("config") or {}).get("recipe") or {})
    rec = portable(rec)
    new = run_id(rec["config"])
    if new != rec.get("run_id"):
        rec["previous_run_ids"] = [*rec.get("previous_run_ids", []), rec.get("run_id")]
        rec["run_id"] = new
    return rec


def merge_evaluations(a: dict, b: dict) -> dict | None:
    """Two records that now share a run id because they differed only in evaluation-only settings (issue 26 #2: a
    re-evaluation with ``task.downstream`` wrote a second record): one record, the one with more evaluations (else the
    newer), holding the other's id in ``previous_run_ids`` and, where it had other evaluation settings, its metrics in
    ``previous_evaluations``.  None when they differ in anything else of their configs."""
    if without_evaluation(a["config"]) != without_evaluation(b["config"]):
        return None
    rank = (lambda r: (len(evaluation_settings(r["config"])), str(r.get("finished"))))
    keep, drop = (a, b) if rank(a) >= rank(b) else (b, a)
    keep = replacing(keep, drop) if evaluation_settings(drop["config"]) != evaluation_settings(keep["config"]) else keep
    ids = [*keep.get("previous_run_ids", []), *drop.get("previous_run_ids", []), drop.get("run_id")]
    keep["previous_run_ids"] = [i for i in dict.fromkeys(ids) if i and i != keep["run_id"]]
    return keep


def migrate(path: Path, dry_run: bool) -> Path | None:
    rec = json.loads(path.read_text())
    new = current(rec)
    target = record_path(path.parent, new["config"])
    if new == rec and target == path:
        return None
    if target.exists() and target != path:
        other = json.loads(target.read_text())
        if other == new:  # an interrupted migration wrote it and stopped before the unlink
            if not dry_run:
                path.unlink()
            return target
        merged = merge_evaluations(new, other)
        if merged is None:
            raise SystemExit(f"{path}: {target.name} already exists and differs; resolve the duplicate by hand")
        if not dry_run:
            write_atomic(target, merged)
            path.unlink()
        return target
    if not dry_run:
        write_atomic(target, new)
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
