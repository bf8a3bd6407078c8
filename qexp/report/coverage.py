"""How much of each GLUE table is measured (issue 29: "measured cells / total per table, before and after"):
``results/tables/coverage.md`` and ``.csv``, built by ``qexp tables`` from the tables of the same build.

A table counts when its CSV has GLUE task columns (CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE, WNLI and the MNLI-m /
-mm halves).  Its cells are the (row, task) pairs of *our* rows -- the rows whose ``model`` is not ``–`` (a row for a
model qexp did not run shows the paper's numbers only) -- and a cell is measured when it holds a number (``–``: not
run, or not possible here; the table's notes say which).  Per table: measured / cells, and the same for the tasks
whose data is offline (every GLUE task but QQP and MNLI; QNLI has its dev split only, so its fine-tuned cells are not
possible either).  Seeds per cell come from the table's ``n <task>`` columns where it has them: the cells with the
paper's seed count (the median of 5 runs for 2021 Table 1) are counted too.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import cells

TASKS = ("CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "MNLI-m", "MNLI-mm", "QNLI", "RTE", "WNLI")
OFFLINE = ("CoLA", "SST-2", "MRPC", "STS-B", "RTE", "WNLI")   # train + dev in ../shared/data/glue
FIVE_SEEDS = 5   # the 2021 paper: median of 5 runs
COLUMNS = ["table", "rows (ours)", "task columns", "measured / cells", "measured / offline-task cells",
           "cells with >= 5 seeds", "cells with >= 3 seeds"]


def _measured(v) -> bool:
    if v is None or (isinstance(v, float) and v != v):
        return False
    return str(v).strip() not in ("", cells.DASH, "nan", "None")


def table_coverage(name: str, df: pd.DataFrame) -> dict | None:
    tasks = [t for t in TASKS if t in df.columns]
    if not tasks:
        return None
    ours = df.loc[df["model"].map(_measured).astype(bool)] if "model" in df.columns else df   # bool even when empty
    n_cells = len(ours) * len(tasks)
    measured = int(sum(_measured(v) for t in tasks for v in ours[t]))
    offline = [t for t in tasks if t in OFFLINE]
    off_cells = len(ours) * len(offline)
    off_measured = int(sum(_measured(v) for t in offline for v in ours[t]))
    seeds = {t: ours[f"n {t}"] for t in tasks if f"n {t}" in ours.columns}

    def at_least(k: int) -> str:
        if not seeds:
            return cells.DASH
        return str(int(sum(int(float(n)) >= k for s in seeds.values() for n in s if _measured(n))))

    return {"table": name, "rows (ours)": len(ours), "task columns": len(tasks),
            "measured / cells": f"{measured} / {n_cells}",
            "measured / offline-task cells": f"{off_measured} / {off_cells}",
            "cells with >= 5 seeds": at_least(FIVE_SEEDS), "cells with >= 3 seeds": at_least(3)}


def build(out_dir: Path) -> dict[str, Path]:
    rows = []
    for csv in sorted(Path(out_dir).glob("*.csv")):
        if csv.stem.endswith("_vs_paper") or csv.stem == "coverage":
            continue
        try:
            df = pd.read_csv(csv, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            continue
        row = table_coverage(csv.stem, df)
        if row is not None:
            rows.append(row)
    t = pd.DataFrame(rows, columns=COLUMNS)
    written = {"coverage": Path(out_dir) / "coverage.csv", "coverage.md": Path(out_dir) / "coverage.md"}
    t.to_csv(written["coverage"], index=False)
    head = ("# How much of each GLUE table is measured\n\nPer generated table with GLUE task columns: our rows (a row "
            "for a model qexp did not run shows the paper's numbers only and is not counted), measured cells (a "
            "number, not –) of all cells and of the tasks whose train and dev data are offline here (CoLA, SST-2, "
            "MRPC, STS-B, RTE, WNLI; QQP and MNLI are not, QNLI has its dev split only), and how many cells hold the "
            "paper's 5 seeds (2021: median of 5 runs) or at least 3, where the table counts seeds per cell.\n\n")
    written["coverage.md"].write_text(head + (t.to_markdown(index=False) if len(t) else "(no GLUE table)") + "\n")
    return written
