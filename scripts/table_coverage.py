#!/usr/bin/env python3
"""How many of a GLUE paper table's cells hold a measurement (issue 29's counts), from the CSVs ``qexp tables`` wrote.

For each 2021 and ZeroQuant GLUE table: measured cells / cells (rows that name a recipe x task columns) for one model
(default minilm_l6).  Works on the tables of any commit (older CSVs have empty cells, newer ones "–"):

    python scripts/table_coverage.py [--tables results/tables] [--model minilm_l6]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qexp.report.spec import GLUE_TASKS  # noqa: E402
from qexp.report.tables import TABLES  # noqa: E402
from qexp.report.zeroquant import GLUE_TABLES  # noqa: E402


def coverage(tables: Path, model: str) -> list[tuple[str, int, int]]:
    out = []
    for spec in [*TABLES, *GLUE_TABLES]:
        path = tables / f"{spec.name}.csv"
        if not path.exists():
            continue
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        rows = [label for label, recipe in spec.rows if recipe]
        zq = spec in GLUE_TABLES
        cols = [c for c, *_ in spec.split_columns] if zq else [GLUE_TASKS[t].label for t in spec.tasks]
        if spec.summary:
            cols = ["GLUE"]
        mine = df[(df.model == model) & df.configuration.isin(rows)] if "model" in df else df[:0]
        if zq and "setting" in mine:   # the default evaluation setting (fake quantization, DeepSpeed grid)
            mine = mine[mine.setting.isin(["", "–"])]
        measured = sum(1 for _, r in mine.iterrows() for c in cols
                       if c in r and str(r[c]).strip() not in ("", "–", "nan", "None"))
        out.append((spec.name, measured, len(rows) * len(cols)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", default="results/tables")
    ap.add_argument("--model", default="minilm_l6")
    a = ap.parse_args()
    print(f"| table | measured / cells ({a.model}) |\n|---|---|")
    for name, m, n in coverage(Path(a.tables), a.model):
        print(f"| {name} | {m} / {n} |")


if __name__ == "__main__":
    main()
