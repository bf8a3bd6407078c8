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

from ..experiment.records import load_records, run_id
from . import cells
from .spec import GLUE_TASKS, MEMORY, TableSpec, register

REFERENCE = Path(__file__).parent / "reference"
GLUE_COLUMNS = {t: g.label for t, g in GLUE_TASKS.items()}


_PROBLEM_TASKS = ("stsb", "mnli", "qnli", "rte")
TABLES = register(
    TableSpec("bondarenko2021_table1", "Bondarenko et al. 2021, Table 1: W8A8 post-training quantization, GLUE dev",
               (("FP32", "fp32"), ("W8A8", "w8a8_ptq"), ("W32A8", "w32a8_ptq"), ("W8A32", "w8a32_ptq")),
               average="GLUE"),
    TableSpec("bondarenko2021_table2", "Bondarenko et al. 2021, Table 2: leave-one-out over activation quantizers "
               "(W32, current min-max on one sequence)",
               (("none (FP32 model)", "fp32"), ("all", "loo_all"), ("all, except softmax input", "loo_softmax_input"),
                ("all, except sum of embeddings", "loo_embedding_sums"),
                ("all, except self-attention output", "loo_attn_output"),
                ("all, except softmax output", "loo_softmax_output"),
                ("all, except residual connections after FFN", "loo_ffn_residual"),
                ("same as above, but for layers 10, 11 only", "loo_ffn_residual_l10_11")), _PROBLEM_TASKS),
    TableSpec("bondarenko2021_table4", "Bondarenko et al. 2021, Table 4: mixed-precision PTQ",
               (("FP32", "fp32"), ("W8A8 PTQ", "w8a8_ptq"), ("MP-PTQ*", "mp_ptq_r16"), ("MP-PTQ*†", "mp_ptq_r16_io16"),
                ("MP-PTQ*†‡", "mp_ptq_r16_io16_out16")), _PROBLEM_TASKS),
    TableSpec("bondarenko2021_table5", "Bondarenko et al. 2021, Table 5: per-embedding-group PTQ",
               (("FP32", "fp32"), ("1 (= per-tensor)", "w8a8_ptq"), ("768 (= per-embd.)", "peg_embd"),
                ("768 (only FFN)*", "peg_embd_ffn"), ("6 (only FFN)", "peg_k6_ffn"), ("3 (only FFN)", "peg_k3_ffn"),
                ("3 + P (only FFN)", "peg_k3p_ffn"), ("6 + P (only FFN)", "peg_ptq")), _PROBLEM_TASKS),
    TableSpec("bondarenko2021_table6", "Bondarenko et al. 2021, Table 6: 8-bit quantization, all proposed methods",
               (("FP32 baseline", "fp32"), ("Our W8A8 PTQ", "w8a8_ptq"),
                ("Our W8A{8,16} MP-PTQ", "mp_ptq_r16_io16_out16"), ("Our W8A8 PEG-PTQ", "peg_ptq"),
                ("Our W8A8 QAT", "qat_w8a8")), average="GLUE",
               literature=("Q8BERT W8A8 PTQ", "Q8BERT W8A8 QAT", "Q-BERT W8A8 QAT")),
    TableSpec("bondarenko2021_table7", "Bondarenko et al. 2021, Table 7: low-bit weights and token embeddings",
               (("FP32 baseline", "fp32"), ("W6A32 PTQ", "w6a32_ptq"), ("W4A32 PTQ", "w4a32_ptq"),
                ("W4A32 AdaRound (PTQ)", "w4a32_adaround"), ("W4A32 QAT", "qat_w4a32"), ("W4A8 QAT", "qat_w4a8"),
                ("W4A8, 2-bit embd. QAT", "qat_w4a8_emb2")), average="GLUE", summary=True),
    TableSpec("bondarenko2021_table12", "Bondarenko et al. 2021, Table 12: low-bit weights and token embeddings, "
               "per task",
               (("FP32 baseline", "fp32"), ("Our W8A32, 6-bit embd. PTQ", "w8a32_emb6_ptq"),
                ("Our W8A32, 4-bit embd. PTQ", "w8a32_emb4_ptq"), ("Our W8A32, 2-bit embd. PTQ", "w8a32_emb2_ptq"),
                ("Our W6A32 PTQ", "w6a32_ptq"), ("Our W4A32 PTQ", "w4a32_ptq"),
                ("Our W4A32 AdaRound (PTQ)", "w4a32_adaround"), ("Our W4A32 QAT", "qat_w4a32"),
                ("Our W4A8 QAT", "qat_w4a8"), ("Our W4A8, 2-bit embd. QAT", "qat_w4a8_emb2")),
               average="GLUE", literature=("Q-BERT W4A8 QAT*", "Q-BERT W4A8 QAT*†")),
)


variant = cells.variant


def frame(records: list[dict]) -> pd.DataFrame:
    cols = ["model", "task", "recipe", "seed", "score", "metrics", "variant", "path", "memory", "calibration",
            "finished", "dirty", "recipe_overrides", "stale"]
    return pd.DataFrame([{"model": r["model"], "task": r["task"], "recipe": r["recipe"], "seed": r["seed"],
                          "score": r.get("score"), "metrics": r.get("metrics", {}),
                          "variant": variant(r.get("config", {})), "path": r.get("_path"),
                          "memory": (r.get("memory") or {}).get("reduction"),
                          "calibration": (r.get("config") or {}).get("calibration"),
                          "finished": str(r.get("finished") or ""), "dirty": bool((r.get("git") or {}).get("dirty")),
                          "recipe_overrides": cells.recipe_overrides(r.get("overrides")), "stale": cells.stale(r)}
                         for r in records], columns=cols)


def warn_mixed(sub: pd.DataFrame, keys: list[str]) -> None:
    """A cell must aggregate seeds of one configuration; say so loudly when it would mix several."""
    for key, g in sub.groupby(keys):
        if g.variant.nunique() > 1:
            warnings.warn(f"cell {key} mixes {g.variant.nunique()} configurations (e.g. another calibration); its "
                          f"median pools them. Records: {sorted(g.path.dropna())}", stacklevel=2)


# why a row can be empty on a model although it ran (the paper's row does not exist there)
ROW_NOTES = {("bondarenko2021_table2", "loo_ffn_residual_l10_11"):
             "BERT-base's layers 10 and 11; a 6-layer model (MiniLM-L6: layers 0-5) has no such layers, so the "
             "recipe's site rule matches no site and the run is refused (not applicable)"}

MODEL_LABELS = {"minilm_l6": "MiniLM-L6", "bert_base": "BERT-base", "bert_large": "BERT-large",
                "tiny_bert": "tiny_bert (random weights)", "roberta_base": "RoBERTa-base"}


BEHIND: dict[str, list[str]] = {}   # table name -> the records behind its cells (for the results page)


def paper_table(df: pd.DataFrame, spec: TableSpec) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(wide table in the paper's layout, one row per model and paper row, with a seed count per cell; long
    comparison with the paper; notes).  Cells follow :mod:`.cells`: one configuration each, seeds per cell, dirty
    records flagged."""
    recipes = {recipe: label for label, recipe in spec.rows if recipe}
    sub = df[df.task.isin(spec.tasks) & df.recipe.isin(list(recipes))].copy()
    sub["column"] = sub.task.map(GLUE_COLUMNS)
    sub, notes = cells.select(sub, ["model", "recipe", "column"])
    BEHIND[spec.name] = sorted(str(p) for p in sub.path.dropna())
    stats = {key: cells.cell_stats(g) for key, g in sub.groupby(["model", "recipe", "column"])}
    memory = sub.dropna(subset=["memory"]).groupby(["model", "recipe"]).memory.median()
    wide = []
    for model in sorted(sub.model.unique()):
        for label, recipe in spec.rows:
            st = {c: stats.get((model, recipe, c), (None, 0, False)) for c in spec.columns}
            row = {"model": model, "configuration": label, **{c: st[c][0] for c in spec.columns},
                   **{f"n {c}": st[c][1] for c in spec.columns},
                   "dirty": ", ".join(c for c in spec.columns if st[c][2])}
            if spec.average:
                full = all(st[c][0] is not None for c in spec.columns)
                row[spec.average] = sum(st[c][0] for c in spec.columns) / len(spec.columns) if full else None
            row[MEMORY] = memory.get((model, recipe))
            wide.append(row)
    every = ["model", "configuration", *spec.columns, *([spec.average] if spec.average else []), MEMORY,
             *[f"n {c}" for c in spec.columns], "dirty"]
    wide = pd.DataFrame(wide, columns=every)[["model", "configuration", *spec.printed,
                                              *[f"n {c}" for c in spec.columns], "dirty"]]   # the paper's layout
    paper = pd.read_csv(REFERENCE / f"{spec.name}.csv").set_index("configuration")
    long = []
    for _, w in wide.iterrows():
        for c in spec.printed:
            ref = paper.loc[w.configuration, c]
            per_task = c in spec.columns
            long.append({"model": w.model, "configuration": w.configuration, "column": c, "ours": w[c],
                         "paper": ref, "delta": w[c] - ref if pd.notna(w[c]) and pd.notna(ref) else None,
                         "seeds": int(w[f"n {c}"]) if per_task else min(int(w[f"n {t}"]) for t in spec.columns)})
    return wide, pd.DataFrame(long, columns=["model", "configuration", "column", "ours", "paper", "delta", "seeds"]), \
        notes


def _fmt(x) -> str:
    return "–" if pd.isna(x) else f"{x:.2f}"


def paper_markdown(wide: pd.DataFrame, spec: TableSpec, notes: list[str] | None = None) -> str:
    paper = pd.read_csv(REFERENCE / f"{spec.name}.csv").set_index("configuration")
    cols = spec.printed
    lines = [f"{spec.title}. Cells: ours [seeds] (paper, BERT-base); ours is the median over seeds of one "
             f"configuration; {cells.DIRTY_MARK}: a record from a dirty tree.", ""]
    empty = {}
    for model, g in wide.groupby("model", sort=True):
        lines += [f"model: {model} (ours: {MODEL_LABELS.get(model, model)}; paper: BERT-base)", "",
                  "| configuration | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for _, w in g.iterrows():
            row = []
            for c in cols:
                if c in spec.columns:
                    ours = cells.fmt_cell(None if pd.isna(w[c]) else w[c], int(w[f"n {c}"]),
                                          c in str(w.dirty).split(", "))
                    if ours == cells.DASH:
                        task = next(t for t in spec.tasks if GLUE_COLUMNS[t] == c)
                        empty.setdefault(c, cells.empty_reason(task))
                else:
                    ours = _fmt(w[c])
                row.append(f"{ours} ({_fmt(paper.loc[w.configuration, c])})")
            lines.append(f"| {w.configuration} | " + " | ".join(row) + " |")
        lines.append("")
    if spec.literature:
        lines += ["Other papers' methods as printed (reference only; see the paper's footnotes):", "",
                  "| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for label in spec.literature:
            lines.append(f"| {label} | " + " | ".join(_fmt(paper.loc[label, c]) for c in cols) + " |")
        lines.append("")
    rows_empty = [(label, recipe) for label, recipe in spec.rows
                  if (spec.name, recipe) in ROW_NOTES and wide[wide.configuration == label][spec.columns].isna().all(axis=None)]
    notes = [*(notes or []), *(f"Row \"{label}\": {ROW_NOTES[(spec.name, recipe)]}." for label, recipe in rows_empty)]
    if empty or notes:
        lines += ["Notes:", ""]
        lines += [f"- Empty cells ({cells.DASH}) in {c}: {why}." for c, why in empty.items()]
        if spec.average and empty:
            lines.append(f"- {spec.average}: printed only when every task column of the row is filled.")
        lines += [f"- {n}" for n in notes or []]
        lines.append("")
    return "\n".join(lines)


_EST_W = {"current_minmax": "min-max", "mse": "MSE", "running_minmax": "running min-max", "percentile": "percentile"}
_EST_A = {**_EST_W, "current_minmax": "current min-max"}  # the paper's names for activation estimators
TABLE9_COLUMNS = ["model", "Task", "Weights", "Activations (bs, nb)", "median score", "seeds", "configurations",
                  "tied", "paper Weights", "paper Activations (bs, nb)", "paper's choice"]


def _acts_label(name: str, bs, nb) -> str:
    return f"{_EST_A.get(name, name)} ({int(bs)})" if name == "current_minmax" else \
        f"{_EST_A.get(name, name)} ({int(bs)}, {int(nb)})"


def table9(df: pd.DataFrame) -> pd.DataFrame:
    """Table 9, the chosen range estimators: for every (model, task), the calibration of the ``estimator_search``
    runs with the best median score over seeds (the paper's rule), beside the paper's BERT-base choice.
    ``tied``: how many other configurations reach the same median (accuracy on a small dev set ties often)."""
    paper = pd.read_csv(REFERENCE / "bondarenko2021_table9.csv").set_index("task")
    sub = df[(df.recipe == "estimator_search") & df.task.isin(list(GLUE_COLUMNS)) & df.calibration.notna()].copy()
    rows = []
    if len(sub):
        cal = pd.DataFrame([{"w": c["weights"]["name"], "a": c["activations"]["name"], "bs": int(c["batch_size"]),
                             "nb": int(c["num_batches"])} for c in sub.calibration], index=sub.index)
        sub = sub.join(cal)
        for (model, task), g in sub.groupby(["model", "task"], sort=True):
            med = g.groupby(["w", "a", "bs", "nb"]).agg(score=("score", "median"), seeds=("seed", "nunique"))
            best_key = med.score.idxmax()
            best = med.loc[best_key]
            w, a, bs, nb = best_key
            p = paper.loc[task] if task in paper.index else None
            same = p is not None and (p.weights, p.activations, int(p.batch_size)) == (w, a, bs) and (
                a == "current_minmax" or int(p.num_batches) == nb)
            rows.append({"model": model, "Task": GLUE_COLUMNS[task], "Weights": _EST_W.get(w, w),
                         "Activations (bs, nb)": _acts_label(a, bs, nb), "median score": best.score,
                         "seeds": int(best.seeds), "configurations": len(med),
                         "tied": int((med.score == best.score).sum() - 1),
                         "paper Weights": None if p is None else _EST_W.get(p.weights, p.weights),
                         "paper Activations (bs, nb)": None if p is None else _acts_label(p.activations, p.batch_size,
                                                                                          p.num_batches),
                         "paper's choice": bool(same)})
    return pd.DataFrame(rows, columns=TABLE9_COLUMNS)


def text_outliers(df: pd.DataFrame) -> pd.DataFrame:
    """The label-free default task: error versus FP32 and outlier statistics per (model, recipe)."""
    sub = df[df.task == "text_outliers"]
    warn_mixed(sub, ["model", "recipe"])
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


class TablesError(ValueError):
    """``qexp tables`` was pointed at something it cannot build from (no such folder, no records)."""


def build_all(runs_dir: Path, out_dir: Path, bench_dir: Path | None = None) -> dict[str, Path]:
    """Every paper table from the run records in ``runs_dir`` (and the ``qexp bench`` records in ``bench_dir``,
    default ``<runs_dir>/../bench``).

    All or nothing (issue 27 #1): a missing ``runs_dir`` or one without a readable record is refused before anything
    is written (zero records would overwrite every committed table with an empty one); the tables are built in a
    temporary sibling folder and moved into ``out_dir`` only when every builder succeeded, so a crash half-way leaves
    the previous tables untouched."""
    import os
    import shutil
    import tempfile

    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    if not runs_dir.is_dir():
        raise TablesError(f"--runs {str(runs_dir)!r} is not a folder (no run records there); the records live in "
                          f"results/runs by default")
    records = load_records(runs_dir)
    if not records:
        raise TablesError(f"--runs {str(runs_dir)!r} holds no readable run record; refusing to overwrite the tables "
                          f"in {str(out_dir)!r} with empty ones")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-building-"))
    try:
        built = _build_into(records, tmp, Path(bench_dir) if bench_dir else runs_dir.parent / "bench")
        fresh = sorted(p for p in tmp.rglob("*") if p.is_file())   # every file a builder wrote, figures too
        for path in fresh:
            target = out_dir / path.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        _remove_stale(out_dir, {p.relative_to(tmp) for p in fresh})
        from .site import build as build_site

        page_dir = out_dir.parent if out_dir.name == "tables" else out_dir   # results/index.html by default
        written = {name: out_dir / Path(path).relative_to(tmp) for name, path in built.items() if name != "index.html"}
        written["index.html"] = build_site(page_dir, out_dir, {**BEHIND, **{f"{k}_vs_paper": v for k, v in
                                                                            BEHIND.items()}})
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


GENERATED = ("bondarenko2021", "bondarenko2023", "zeroquant", "kwon2021", "chitsaz2024", "claims", "cross_paper",
             "text_outliers", "coverage")


def _remove_stale(out_dir: Path, fresh: set[Path]) -> None:
    """A file of an earlier build that this build did not write (a figure of a setting whose records were migrated, a
    table that was renamed) would sit beside the fresh ones as if current: removed.  Only the names ``qexp tables``
    writes are touched; anything else in the folder stays."""
    import warnings

    stale = sorted(p for p in out_dir.iterdir() if p.is_file() and p.name.startswith(GENERATED)
                   and p.relative_to(out_dir) not in fresh)
    for p in stale:
        p.unlink()
    if stale:
        warnings.warn(f"qexp tables: removed {len(stale)} file(s) of an earlier build that this build did not write: "
                      f"{', '.join(p.name for p in stale[:5])}{' ...' if len(stale) > 5 else ''}", stacklevel=2)


def _build_into(records: list[dict], out_dir: Path, bench: Path) -> dict[str, Path]:
    """Every table from ``records`` into ``out_dir`` (a fresh folder)."""
    from . import bondarenko2023, chitsaz2024, kwon2021, zeroquant
    from .gemm import table_g8

    df = frame(records)
    written = zeroquant.build(records, out_dir)
    written.update(bondarenko2023.build(records, out_dir))
    from . import bondarenko2023_table9

    written.update(bondarenko2023_table9.build(records, out_dir))
    from . import cross_paper

    written.update(cross_paper.build(records, out_dir))
    written.update(chitsaz2024.build(records, out_dir))
    written.update(kwon2021.build(records, out_dir))
    from . import kwon2021_summary

    written.update(kwon2021_summary.build(records, out_dir))
    written.update(chitsaz2024.build_memory(bench, out_dir))
    g8 = table_g8(bench)
    written["zeroquant_tableG8"] = out_dir / "zeroquant_tableG8.csv"
    g8.to_csv(written["zeroquant_tableG8"], index=False, float_format="%.6g")
    for spec in TABLES:
        wide, long, notes = paper_table(df, spec)
        written[spec.name] = out_dir / f"{spec.name}.csv"
        wide.to_csv(written[spec.name], index=False, float_format="%.2f")
        written[f"{spec.name}_vs_paper"] = out_dir / f"{spec.name}_vs_paper.csv"
        long.to_csv(written[f"{spec.name}_vs_paper"], index=False, float_format="%.2f")
        written[f"{spec.name}.md"] = out_dir / f"{spec.name}.md"
        written[f"{spec.name}.md"].write_text(paper_markdown(wide, spec, notes))
    from . import claims

    c = pd.concat([claims.check(df), claims.check_table9(records)], ignore_index=True)
    written["claims"] = out_dir / "claims.csv"
    c.to_csv(written["claims"], index=False)
    written["claims.md"] = out_dir / "claims.md"
    written["claims.md"].write_text(claims.markdown(c))
    t9 = table9(df)
    written["bondarenko2021_table9"] = out_dir / "bondarenko2021_table9.csv"
    t9.to_csv(written["bondarenko2021_table9"], index=False, float_format="%.2f")
    written["bondarenko2021_table9.md"] = out_dir / "bondarenko2021_table9.md"
    paper9 = pd.read_csv(REFERENCE / "bondarenko2021_table9.csv")
    written["bondarenko2021_table9.md"].write_text(
        "Bondarenko et al. 2021, Table 9: best range estimators for W8A8 PTQ (best median over seeds of the "
        "`estimator_search` runs; paper: BERT-base)\n\n" + (t9.to_markdown(index=False, floatfmt=".2f") if len(t9)
                                                          else "(no estimator_search runs yet)") +
        "\n\nThe paper's choices (shipped as conf/calibration/per_task/<task>.yaml):\n\n"
        + paper9.to_markdown(index=False) + "\n")
    outl = text_outliers(df)
    written["text_outliers"] = out_dir / "text_outliers.csv"
    outl.to_csv(written["text_outliers"], index=False, float_format="%.4g")
    written["text_outliers.md"] = out_dir / "text_outliers.md"
    written["text_outliers.md"].write_text(
        "Label-free default task (pydoc text): relative error versus FP32 and outlier statistics\n\n"
        + outl.to_markdown(index=False, floatfmt=".2f") + "\n")
    for path in written.values():   # no nan/None cell anywhere: an empty cell is "–", and the table says why
        if path.suffix == ".csv" and path.exists():
            cells.dash_empty_csv(path)
        elif path.suffix == ".md" and path.exists():
            path.write_text(cells.dash_empty_markdown(path.read_text()))
    from .latex import write_latex_for

    written.update(write_latex_for(written))
    from . import coverage, paper_pages

    written.update(coverage.build(out_dir))      # counts the finished tables' cells
    written.update(paper_pages.build(out_dir))   # last: it quotes the finished tables
    return written
