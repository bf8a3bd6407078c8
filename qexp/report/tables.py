"""Paper tables as a pure function of the run records (STYLE 10): nobody edits a CSV by hand.

Every table is built with pandas from ``results/runs/*.json``: cells are the median over seeds of a run's score,
rows and columns follow the paper, missing cells stay empty, and where the paper printed a number it sits beside
ours with the delta (ours - paper).  Published values live in ``qexp/report/reference/*.csv`` (typed in from the
paper text in ../shared/papers, nothing computed).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from ..records import load_records, run_id

REFERENCE = Path(__file__).parent / "reference"
GLUE_COLUMNS = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP", "mnli": "MNLI",
                "qnli": "QNLI", "rte": "RTE"}
TABLE1_ROWS = ["FP32", "W8A8", "W32A8", "W8A32"]


def variant(config: dict) -> str:
    """The run id of a config without its seed: records of one variant differ only by seed."""
    return run_id({k: v for k, v in config.items() if k != "seed"})


def frame(records: list[dict]) -> pd.DataFrame:
    rows = []
    for r in records:
        row = (r.get("config", {}).get("recipe") or {}).get("table_row") or {}
        rows.append({"model": r["model"], "task": r["task"], "recipe": r["recipe"], "seed": r["seed"],
                     "score": r.get("score"), "table": row.get("table"), "row": row.get("row"),
                     "metrics": r.get("metrics", {}), "variant": variant(r.get("config", {})),
                     "path": r.get("_path")})
    return pd.DataFrame(rows, columns=["model", "task", "recipe", "seed", "score", "table", "row", "metrics",
                                       "variant", "path"])


def warn_mixed(sub: pd.DataFrame, keys: list[str]) -> None:
    """A cell must aggregate seeds of one configuration; say so loudly when it would mix several."""
    for key, g in sub.groupby(keys):
        if g.variant.nunique() > 1:
            warnings.warn(f"cell {key} mixes {g.variant.nunique()} configurations (e.g. another calibration); its "
                          f"median pools them. Records: {sorted(g.path.dropna())}", stacklevel=2)


def _fmt(x) -> str:
    return "" if pd.isna(x) else f"{x:.2f}"


def table1(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Bondarenko et al. 2021 Table 1: (wide table per model, long comparison with the paper)."""
    cols = list(GLUE_COLUMNS.values())
    sub = df[(df.table == "bondarenko2021_table1") & df.task.isin(list(GLUE_COLUMNS))].copy()
    sub["column"] = sub.task.map(GLUE_COLUMNS)
    warn_mixed(sub, ["model", "row", "column"])
    med = sub.groupby(["model", "row", "column"]).score.median()
    seeds = sub.groupby(["model", "row", "column"]).seed.nunique()
    models = sorted(sub.model.unique())
    wide = []
    for m in models:
        for row in TABLE1_ROWS:
            cells = {c: med.get((m, row, c)) for c in cols}
            full = all(cells[c] is not None for c in cols)
            n = [int(seeds[(m, row, c)]) for c in cols if (m, row, c) in seeds.index]
            wide.append({"model": m, "configuration": row, **cells,
                         "GLUE": sum(cells.values()) / len(cols) if full else None,
                         "seeds": min(n) if n else None})
    wide = pd.DataFrame(wide, columns=["model", "configuration", *cols, "GLUE", "seeds"])
    paper = pd.read_csv(REFERENCE / "bondarenko2021_table1.csv").set_index("configuration")
    long = []
    for _, w in wide.iterrows():
        for c in [*cols, "GLUE"]:
            ours = w[c]
            ref = paper.loc[w.configuration, c]
            long.append({"model": w.model, "configuration": w.configuration, "column": c,
                         "ours": ours, "paper": ref, "delta": (ours - ref) if pd.notna(ours) else None,
                         "seeds": int(seeds.get((w.model, w.configuration, c), 0)) if c != "GLUE" else w.seeds})
    return wide, pd.DataFrame(long, columns=["model", "configuration", "column", "ours", "paper", "delta", "seeds"])


def table1_markdown(wide: pd.DataFrame) -> str:
    paper = pd.read_csv(REFERENCE / "bondarenko2021_table1.csv").set_index("configuration")
    cols = [*GLUE_COLUMNS.values(), "GLUE"]
    lines = ["Bondarenko et al. 2021, Table 1 (GLUE dev; median over seeds): ours (paper, BERT-base)", ""]
    for m, g in wide.groupby("model", sort=True):
        lines += [f"model: {m}", "", "| configuration | " + " | ".join(cols) + " | seeds |",
                  "|---|" + "---|" * (len(cols) + 1)]
        for _, w in g.iterrows():
            cells = [f"{_fmt(w[c]) or '–'} ({paper.loc[w.configuration, c]:.2f})" for c in cols]
            lines.append(f"| {w.configuration} | " + " | ".join(cells) + f" | {_fmt_int(w.seeds)} |")
        lines.append("")
    return "\n".join(lines)


def _fmt_int(x) -> str:
    return "" if pd.isna(x) else str(int(x))


def text_outliers(df: pd.DataFrame) -> pd.DataFrame:
    """The label-free default task: error versus FP32 and outlier statistics per (model, recipe)."""
    sub = df[df.task == "text_outliers"]
    rows = []
    for (m, rec), g in sub.groupby(["model", "recipe"], sort=True):
        ms = pd.DataFrame(list(g.metrics))
        rows.append({"model": m, "recipe": rec,
                     "final rel. error %": 100 * ms.final_rel_error.median(),
                     "mean site rel. error %": 100 * ms.mean_site_rel_error.median(),
                     "worst site": ms.max_site_rel_error_site.mode().iloc[0] if ms.max_site_rel_error.max() > 0 else "",
                     "worst site rel. error %": 100 * ms.max_site_rel_error.median(),
                     "max inf-norm": ms.max_inf_norm.median(), "avg kurtosis": ms.avg_kurtosis.median(),
                     "seeds": g.seed.nunique()})
    order = {"fp32": 0, "w8a8_ptq": 1, "w8a32_ptq": 2, "w32a8_ptq": 3}
    out = pd.DataFrame(rows, columns=["model", "recipe", "final rel. error %", "mean site rel. error %", "worst site",
                                      "worst site rel. error %", "max inf-norm", "avg kurtosis", "seeds"])
    return out.sort_values(["model", "recipe"], key=lambda s: s.map(order).fillna(99) if s.name == "recipe" else s)


def _markdown(df: pd.DataFrame, title: str) -> str:
    return f"{title}\n\n" + df.to_markdown(index=False, floatfmt=".2f") + "\n"


def build_all(runs_dir: Path, out_dir: Path) -> dict[str, Path]:
    df = frame(load_records(runs_dir)) if Path(runs_dir).exists() else frame([])
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    wide, long = table1(df)
    written["bondarenko2021_table1"] = out_dir / "bondarenko2021_table1.csv"
    wide.to_csv(written["bondarenko2021_table1"], index=False, float_format="%.2f")
    written["bondarenko2021_table1_vs_paper"] = out_dir / "bondarenko2021_table1_vs_paper.csv"
    long.to_csv(written["bondarenko2021_table1_vs_paper"], index=False, float_format="%.2f")
    written["bondarenko2021_table1.md"] = out_dir / "bondarenko2021_table1.md"
    written["bondarenko2021_table1.md"].write_text(table1_markdown(wide))
    outl = text_outliers(df)
    written["text_outliers"] = out_dir / "text_outliers.csv"
    outl.to_csv(written["text_outliers"], index=False, float_format="%.4g")
    written["text_outliers.md"] = out_dir / "text_outliers.md"
    written["text_outliers.md"].write_text(_markdown(
        outl, "Label-free default task (pydoc text): relative error versus FP32 and outlier statistics"))
    return written
