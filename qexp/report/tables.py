"""Paper tables as a pure function of the run records (STYLE 10): nobody edits a CSV by hand.

Every table is built with pandas from ``results/runs/*.json``.  A table spec (``TABLES``) names, for each row as the
paper prints it, the recipe whose runs fill it (one recipe may serve several tables), and the tasks of its columns.
A cell is the median over seeds of the runs' scores; missing cells stay empty; where the paper printed a number it
sits beside ours with the delta (ours - paper).  Published values live in ``qexp/report/reference/<table>.csv``,
typed in from the paper text in ../shared/papers (nothing computed).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..records import load_records, run_id

REFERENCE = Path(__file__).parent / "reference"
GLUE_COLUMNS = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP", "mnli": "MNLI",
                "qnli": "QNLI", "rte": "RTE"}


@dataclass(frozen=True)
class PaperTable:
    name: str                              # file stem under results/tables and qexp/report/reference
    title: str
    rows: tuple[tuple[str, str], ...]      # (row label as printed in the paper, recipe name)
    tasks: tuple[str, ...]                 # column tasks, in the paper's order
    average: str | None = None             # name of a mean-over-all-columns column (only when every column exists)

    @property
    def columns(self) -> list[str]:
        return [GLUE_COLUMNS[t] for t in self.tasks]


_PROBLEM_TASKS = ("stsb", "mnli", "qnli", "rte")
TABLES = [
    PaperTable("bondarenko2021_table1", "Bondarenko et al. 2021, Table 1: W8A8 post-training quantization, GLUE dev",
               (("FP32", "fp32"), ("W8A8", "w8a8_ptq"), ("W32A8", "w32a8_ptq"), ("W8A32", "w8a32_ptq")),
               tuple(GLUE_COLUMNS), average="GLUE"),
    PaperTable("bondarenko2021_table2", "Bondarenko et al. 2021, Table 2: leave-one-out over activation quantizers "
               "(W32, current min-max on one sequence)",
               (("none (FP32 model)", "fp32"), ("all", "loo_all"), ("all, except softmax input", "loo_softmax_input"),
                ("all, except sum of embeddings", "loo_embedding_sums"),
                ("all, except self-attention output", "loo_attn_output"),
                ("all, except softmax output", "loo_softmax_output"),
                ("all, except residual connections after FFN", "loo_ffn_residual"),
                ("same as above, but for layers 10, 11 only", "loo_ffn_residual_l10_11")), _PROBLEM_TASKS),
    PaperTable("bondarenko2021_table4", "Bondarenko et al. 2021, Table 4: mixed-precision PTQ",
               (("FP32", "fp32"), ("W8A8 PTQ", "w8a8_ptq"), ("MP-PTQ*", "mp_ptq_r16"), ("MP-PTQ*†", "mp_ptq_r16_io16"),
                ("MP-PTQ*†‡", "mp_ptq_r16_io16_out16")), _PROBLEM_TASKS),
    PaperTable("bondarenko2021_table5", "Bondarenko et al. 2021, Table 5: per-embedding-group PTQ",
               (("FP32", "fp32"), ("1 (= per-tensor)", "w8a8_ptq"), ("768 (= per-embd.)", "peg_embd"),
                ("768 (only FFN)*", "peg_embd_ffn"), ("6 (only FFN)", "peg_k6_ffn"), ("3 (only FFN)", "peg_k3_ffn"),
                ("3 + P (only FFN)", "peg_k3p_ffn"), ("6 + P (only FFN)", "peg_ptq")), _PROBLEM_TASKS),
]


def variant(config: dict) -> str:
    """The run id of a config without its seed: records of one variant differ only by seed."""
    return run_id({k: v for k, v in config.items() if k != "seed"})


def frame(records: list[dict]) -> pd.DataFrame:
    cols = ["model", "task", "recipe", "seed", "score", "metrics", "variant", "path"]
    return pd.DataFrame([{"model": r["model"], "task": r["task"], "recipe": r["recipe"], "seed": r["seed"],
                          "score": r.get("score"), "metrics": r.get("metrics", {}),
                          "variant": variant(r.get("config", {})), "path": r.get("_path")} for r in records],
                        columns=cols)


def warn_mixed(sub: pd.DataFrame, keys: list[str]) -> None:
    """A cell must aggregate seeds of one configuration; say so loudly when it would mix several."""
    for key, g in sub.groupby(keys):
        if g.variant.nunique() > 1:
            warnings.warn(f"cell {key} mixes {g.variant.nunique()} configurations (e.g. another calibration); its "
                          f"median pools them. Records: {sorted(g.path.dropna())}", stacklevel=2)


def paper_table(df: pd.DataFrame, spec: PaperTable) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(wide table in the paper's layout, one row per model and paper row; long comparison with the paper)."""
    recipes = {recipe: label for label, recipe in spec.rows}
    sub = df[df.task.isin(spec.tasks) & df.recipe.isin(list(recipes))].copy()
    sub["column"] = sub.task.map(GLUE_COLUMNS)
    warn_mixed(sub, ["model", "recipe", "column"])
    med = sub.groupby(["model", "recipe", "column"]).score.median()
    seeds = sub.groupby(["model", "recipe", "column"]).seed.nunique()
    extra = [spec.average] if spec.average else []
    wide = []
    for model in sorted(sub.model.unique()):
        for label, recipe in spec.rows:
            cells = {c: med.get((model, recipe, c)) for c in spec.columns}
            n = [int(seeds[(model, recipe, c)]) for c in spec.columns if (model, recipe, c) in seeds.index]
            row = {"model": model, "configuration": label, **cells, "seeds": min(n) if n else None}
            if spec.average:
                full = all(cells[c] is not None for c in spec.columns)
                row[spec.average] = sum(cells.values()) / len(cells) if full else None
            wide.append(row)
    wide = pd.DataFrame(wide, columns=["model", "configuration", *spec.columns, *extra, "seeds"])
    paper = pd.read_csv(REFERENCE / f"{spec.name}.csv").set_index("configuration")
    long = []
    for _, w in wide.iterrows():
        recipe = dict(spec.rows)[w.configuration]
        for c in [*spec.columns, *extra]:
            ref = paper.loc[w.configuration, c]
            long.append({"model": w.model, "configuration": w.configuration, "column": c, "ours": w[c],
                         "paper": ref, "delta": w[c] - ref if pd.notna(w[c]) else None,
                         "seeds": w.seeds if c in extra else int(seeds.get((w.model, recipe, c), 0))})
    return wide, pd.DataFrame(long, columns=["model", "configuration", "column", "ours", "paper", "delta", "seeds"])


def _fmt(x) -> str:
    return "–" if pd.isna(x) else f"{x:.2f}"


def paper_markdown(wide: pd.DataFrame, spec: PaperTable) -> str:
    paper = pd.read_csv(REFERENCE / f"{spec.name}.csv").set_index("configuration")
    cols = [*spec.columns, *([spec.average] if spec.average else [])]
    lines = [f"{spec.title}. Cells: ours (paper, BERT-base); median over seeds.", ""]
    for model, g in wide.groupby("model", sort=True):
        lines += [f"model: {model}", "", "| configuration | " + " | ".join(cols) + " | seeds |",
                  "|---|" + "---|" * (len(cols) + 1)]
        for _, w in g.iterrows():
            cells = [f"{_fmt(w[c])} ({paper.loc[w.configuration, c]:.2f})" for c in cols]
            lines.append(f"| {w.configuration} | " + " | ".join(cells) + f" | {'' if pd.isna(w.seeds) else int(w.seeds)} |")
        lines.append("")
    return "\n".join(lines)


def text_outliers(df: pd.DataFrame) -> pd.DataFrame:
    """The label-free default task: error versus FP32 and outlier statistics per (model, recipe)."""
    sub = df[df.task == "text_outliers"]
    rows = []
    for (m, rec), g in sub.groupby(["model", "recipe"], sort=True):
        ms = pd.DataFrame(list(g.metrics))
        worst = ms.max_site_rel_error_site.mode().iloc[0] if ms.max_site_rel_error.max() > 0 else ""
        rows.append({"model": m, "recipe": rec,
                     "final rel. error %": 100 * ms.final_rel_error.median(),
                     "mean site rel. error %": 100 * ms.mean_site_rel_error.median(),
                     "worst site": worst, "worst site rel. error %": 100 * ms.max_site_rel_error.median(),
                     "max inf-norm": ms.max_inf_norm.median(), "avg kurtosis": ms.avg_kurtosis.median(),
                     "seeds": g.seed.nunique()})
    order = {"fp32": 0, "w8a8_ptq": 1, "w8a32_ptq": 2, "w32a8_ptq": 3}
    out = pd.DataFrame(rows, columns=["model", "recipe", "final rel. error %", "mean site rel. error %", "worst site",
                                      "worst site rel. error %", "max inf-norm", "avg kurtosis", "seeds"])
    return out.sort_values(["model", "recipe"], key=lambda s: s.map(order).fillna(99) if s.name == "recipe" else s)


def build_all(runs_dir: Path, out_dir: Path) -> dict[str, Path]:
    df = frame(load_records(runs_dir)) if Path(runs_dir).exists() else frame([])
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for spec in TABLES:
        wide, long = paper_table(df, spec)
        written[spec.name] = out_dir / f"{spec.name}.csv"
        wide.to_csv(written[spec.name], index=False, float_format="%.2f")
        written[f"{spec.name}_vs_paper"] = out_dir / f"{spec.name}_vs_paper.csv"
        long.to_csv(written[f"{spec.name}_vs_paper"], index=False, float_format="%.2f")
        written[f"{spec.name}.md"] = out_dir / f"{spec.name}.md"
        written[f"{spec.name}.md"].write_text(paper_markdown(wide, spec))
    outl = text_outliers(df)
    written["text_outliers"] = out_dir / "text_outliers.csv"
    outl.to_csv(written["text_outliers"], index=False, float_format="%.4g")
    written["text_outliers.md"] = out_dir / "text_outliers.md"
    written["text_outliers.md"].write_text(
        "Label-free default task (pydoc text): relative error versus FP32 and outlier statistics\n\n"
        + outl.to_markdown(index=False, floatfmt=".2f") + "\n")
    return written
