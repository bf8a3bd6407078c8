"""GLUE tasks as data: each conf/task/<name>.yaml says where the data is and what the fields are (STYLE 8).

Two sources give the same ``datasets.Dataset`` with columns ``text_a``, ``text_b`` (pair tasks) and ``label``:
- the hub: ``datasets.load_dataset(task.hub.path, task.hub.name)`` (cache first; fail fast offline);
- ``task.data_dir=DIR``: the original GLUE TSV layout (what GLUE's download script writes).
"""
from __future__ import annotations

import csv
from pathlib import Path

import datasets
import pandas as pd

from ..common.hub import from_hub


class DataError(RuntimeError):
    pass


def _standardise(ds: datasets.Dataset, text_fields, label_field) -> datasets.Dataset:
    cols = {text_fields[0]: "text_a", label_field: "label"}
    if len(text_fields) > 1:
        cols[text_fields[1]] = "text_b"
    missing = [c for c in cols if c not in ds.column_names]
    if missing:
        raise DataError(f"columns {missing} not found; the data has {ds.column_names}")
    ds = ds.select_columns(list(cols)).rename_columns(cols)
    return ds


def _read_tsv(path: Path, tsv, regression: bool, num_labels: int | None = None,
              text: list[str] | None = None) -> datasets.Dataset:
    """One GLUE TSV file, checked: a malformed row (a field too many or too few), a missing column, a label that is
    not a number or outside 0..num_labels-1 (or not one of the task's label names) names the file and the line."""
    if not path.exists():
        raise DataError(f"GLUE file {str(path)!r} does not exist (task.data_dir should hold the task's "
                        f"original GLUE TSV files, e.g. {tsv.get('train', 'train.tsv')} and dev.tsv)")
    header = 0 if tsv.get("header", True) else None
    try:
        df = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, header=header, dtype=str, keep_default_na=False,
                         names=list(tsv.columns) if tsv.get("columns") else None, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path}: not a valid GLUE TSV file: {str(e).strip()}") from None
    first_line = 2 if header == 0 else 1           # the file's line number of the first data row

    def where(i) -> str:
        return f"{path}, line {int(i) + first_line}"

    label = tsv.label
    for col in [label, *(text or [])]:
        if col not in df.columns:
            raise DataError(f"{path}: no column {col!r}; columns are {list(df.columns)}")
    n_fields = len(df.columns)
    with open(path, encoding="utf-8-sig") as f:   # pandas pads a row with too few fields with empty strings
        for n, line in enumerate(f, 1):
            if n >= first_line and line.strip("\r\n") and line.rstrip("\r\n").count("\t") + 1 < n_fields:
                raise DataError(f"{path}, line {n}: {line.rstrip(chr(10)).count(chr(9)) + 1} tab-separated fields, "
                                f"the header has {n_fields} ({', '.join(map(str, df.columns))})")
    if tsv.get("labels"):
        names = list(tsv.labels)
        bad = ~df[label].isin(names)
        if bad.any():
            i = bad.idxmax()
            raise DataError(f"{where(i)}: label {df[label][i]!r} is not one of {names}")
        df[label] = df[label].map({n: i for i, n in enumerate(names)})
        return datasets.Dataset.from_pandas(df, preserve_index=False)
    values = pd.to_numeric(df[label], errors="coerce")
    if regression:
        bad = values.isna()
        valid = "a number"
    else:
        allowed = range(int(num_labels)) if num_labels else None
        bad = values.isna() | (values != values.round()) | (
            ~values.isin(list(allowed)) if allowed is not None else False)
        valid = f"one of {list(allowed)}" if allowed is not None else "an integer"
    if bad.any():
        i = bad.idxmax()
        raise DataError(f"{where(i)}: label {df[label][i]!r} is not {valid}")
    df[label] = values.astype(float if regression else int)
    return datasets.Dataset.from_pandas(df, preserve_index=False)


def load_split(task, split: str, data_dir: str | None) -> datasets.Dataset:
    """``split`` is ``train`` or the name of one of ``task.eval_splits``."""
    if split == "train":
        hub_split, tsv_file = task.hub.get("train_split", "train"), task.tsv.get("train", "train.tsv")
    else:
        matches = [s for s in task.eval_splits if s.name == split]
        if not matches:
            raise DataError(f"task {task.name!r} has no split {split!r}; eval splits: "
                            f"{[s.name for s in task.eval_splits]}")
        hub_split, tsv_file = matches[0].hub, matches[0].tsv
    if data_dir:
        ds = _read_tsv(Path(data_dir) / tsv_file, task.tsv, bool(task.regression),
                       None if task.regression else task.get("num_labels"), list(task.tsv.text))
        return _standardise(ds, list(task.tsv.text), task.tsv.label)

    def load(local_only: bool):
        return datasets.load_dataset(task.hub.path, task.hub.name, split=hub_split)

    ds = from_hub(load, f"dataset {task.hub.path}/{task.hub.name} (split {hub_split})",
                  f"task.data_dir=/path/to/glue/{task.tsv.get('dir_name', task.name)} (the original GLUE TSV files)",
                  datasets_lib=True)
    return _standardise(ds, list(task.hub.text), task.hub.get("label", "label"))
