"""Which records may fill a table cell, and how a cell says what it holds (issue 29: a table cell is a claim).

Rules shared by the paper tables (2021, ZeroQuant GLUE):

* **current ids only**: a record whose stored run id is not the id the current code computes from its config (written
  before a run-id change and not migrated: ``scripts/migrate_run_ids.py``) is left out with a note;
* **no overrides of the recipe under its name**: a record run with ``recipe.*`` overrides (``w8a8_ptq`` at
  ``recipe.quant.activations.bits=4``) is another configuration, never the recipe's row: left out with a note;
* **one configuration per cell**: when the remaining records of a (model, task, recipe) cell come from several
  configurations (another calibration, an older recipe version), the configuration of the newest record supersedes
  the others, and the notes say how many records were superseded;
* **seeds per cell**: the count of records with a finite score (a NaN score never counts as a seed);
* **dirty trees flagged**: a cell holding a record written from a dirty tree is marked ``†``.

Empty cells are ``–`` everywhere (CSV, Markdown, LaTeX) and every table with an empty cell says why.
"""
from __future__ import annotations

import math

import pandas as pd

DIRTY_MARK = "†"
DASH = "–"


def variant(config: dict) -> str:
    """The run id of a config without its seed: records of one variant differ only by seed."""
    from ..experiment.records import run_id

    return run_id({k: v for k, v in config.items() if k != "seed"})


def recipe_overrides(overrides) -> tuple[str, ...]:
    """The command-line overrides that change the recipe itself (``recipe.x=...``, ``+recipe.x=...``), not the
    recipe's choice (``+recipe=name``)."""
    out = []
    for o in overrides or []:
        key = str(o).lstrip("+~").split("=", 1)[0]
        if key.startswith("recipe."):
            out.append(str(o))
    return tuple(out)


def stale(record: dict) -> bool:
    """Whether the record's stored run id is not what the current code computes from its config."""
    from ..experiment.records import run_id

    cfg = record.get("config") or {}
    return bool(record.get("run_id")) and bool(cfg) and record["run_id"] != run_id(cfg)


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def select(df: pd.DataFrame, keys: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The records that fill the cells keyed by ``keys`` (e.g. model, task, recipe), by the rules above; returns
    (selected records, notes).  ``df`` needs the columns ``variant``, ``finished``, ``recipe_overrides``, ``stale``
    and ``path``."""
    notes = []
    if not len(df):
        return df, notes
    bad = df[df.stale]
    if len(bad):
        notes.append(f"{len(bad)} record(s) with a run id from older code left out (run scripts/migrate_run_ids.py): "
                     + ", ".join(sorted(str(p).rsplit('/', 1)[-1] for p in bad.path.dropna())[:3])
                     + (" ..." if len(bad) > 3 else ""))
    df = df[~df.stale]
    over = df[df.recipe_overrides.map(bool)]
    for (recipe, ov), g in over.groupby([over.recipe, over.recipe_overrides.map(" ".join)], sort=True):
        notes.append(f"{len(g)} {recipe} record(s) run with `{ov}` left out: another configuration than the "
                     f"recipe's row")
    df = df[~df.recipe_overrides.map(bool)]
    keep = []
    for key, g in df.groupby(keys, sort=True):
        if g.variant.nunique() > 1:
            newest = g.sort_values("finished", kind="stable").variant.iloc[-1]
            old = g[g.variant != newest]
            notes.append(f"{'/'.join(map(str, key if isinstance(key, tuple) else (key,)))}: {len(old)} record(s) of "
                         f"{old.variant.nunique()} older configuration(s) superseded by the newest configuration "
                         f"({(g.variant == newest).sum()} record(s))")
            g = g[g.variant == newest]
        keep.append(g)
    return (pd.concat(keep) if keep else df[:0]), notes


def cell_stats(g: pd.DataFrame) -> tuple[float | None, int, bool]:
    """(median of the finite scores, how many seeds they are, whether any record is from a dirty tree)."""
    ok = g[g.score.map(finite)]
    if not len(ok):
        return None, 0, bool(g.dirty.any()) if len(g) else False
    return float(ok.score.median()), int(ok.seed.nunique()), bool(ok.dirty.any())


def fmt_cell(value, n: int, dirty: bool, digits: int = 2) -> str:
    """``65.00 [3]`` (median over 3 seeds), ``65.00 [3]†`` (a record from a dirty tree), ``–`` (empty)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return f"{value:.{digits}f} [{n}]" + (DIRTY_MARK if dirty else "")


EMPTY_DATASETS = {
    "qqp": "QQP is not offline here (../shared/data has no QQP; the hub is unreachable)",
    "mnli": "MNLI is not offline here (../shared/data has no MNLI; the hub is unreachable)",
    "qnli": "only QNLI's dev set is offline: no training data to fine-tune on",
}


def empty_reason(task: str) -> str:
    return EMPTY_DATASETS.get(task, "not run yet (CPU time; the README says how to run it)")


def dash_empty_csv(path) -> None:
    """Rewrite a CSV so that no cell is empty, ``nan`` or ``None``: an empty cell is ``–`` (issue 29)."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return
    if not len(df.columns):
        return
    empty = df.isin(["", "nan", "NaN", "None", "<NA>", "null"])
    if empty.values.any():
        df = df.mask(empty, DASH)
        df.to_csv(path, index=False)


def dash_empty_markdown(text: str) -> str:
    """Markdown table cells ``nan``/``None``/empty become ``–``; a table that has one gets a footnote unless it
    already explains its empty cells."""
    lines, changed = [], False
    for line in text.split("\n"):
        if line.startswith("|") and not set(line) <= set("|-: "):
            cells = line.strip().strip("|").split("|")
            new = [f" {DASH} " if c.strip() in ("", "nan", "NaN", "None", "<NA>", "nan (nan)", "None (None)") else c
                   for c in cells]
            if new != cells:
                changed = True
                line = "|" + "|".join(new) + "|"
        lines.append(line)
    out = "\n".join(lines)
    if (changed or f"| {DASH}" in out or f" {DASH} (" in out) and "Empty cells (" not in out:
        out = out.rstrip("\n") + (f"\n\nEmpty cells ({DASH}): no record of that configuration yet (not run here, or "
                                  f"the model or dataset is not offline), or the paper prints none.\n")
    return out


def markdown_rows(t: pd.DataFrame) -> str:
    """The frame as a Markdown table, cells as they are (``|`` inside a cell escaped)."""
    cols = list(t.columns)
    lines = ["| " + " | ".join(str(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in t.itertuples(index=False)]
    return "\n".join(lines)


def markdown_table(t: pd.DataFrame, head: str, notes: list[str]) -> str:
    """``head``, the frame as a Markdown table (cells as they are), then the notes as a list."""
    return head + markdown_rows(t) + "\n\nNotes:\n" + "\n".join(f"- {n}" for n in notes) + "\n"
