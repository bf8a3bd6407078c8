"""ZeroQuant's tables (Yao et al. 2022, appendix) from the run records, in the paper's layouts.

- GLUE tables (C.1, E.1, E.2, G.5, G.6, G.9, G.12): columns CoLA, MNLI-m, MNLI-mm, MRPC (acc/F1), QNLI, QQP (acc/F1),
  RTE, SST-2, STS-B (Pearson/Spearman), Ave.; a two-metric task enters the average as the mean of its two metrics
  (Appendix A.3), and Ave. is printed only when every column exists.  A cell is the median over seeds of each metric.
- Table G.10: ZeroQuant Eq. 3 relative error (records' ``relative_error``), standard (per-tensor static) quantization
  versus group-wise weights / token-wise activations, per (model, task).
- Tables I.1/I.2 (and I.3): one row per zero-shot task (lm-eval accuracy x 100) plus the Wikitext-2 perplexity, one
  column per recipe, per model.
Published numbers sit beside ours ("ours (paper)") in the Markdown; the CSVs hold ours in the paper's layout.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import cells
from .spec import ZEROQUANT_ORDER, TableSpec, register

REFERENCE = Path(__file__).parent / "reference"


def _glue(name: str, title: str, rows: tuple) -> TableSpec:
    return TableSpec(name, title, rows, ZEROQUANT_ORDER, average="Ave.")


GLUE_TABLES = register(
    _glue("zeroquant_tableC1", "ZeroQuant Table C.1: PTQ of BERT-base (static per-tensor), GLUE dev",
              (("W16A16", "fp32"), ("W8A16", "zq_ptq_w8a16"), ("W16A8", "zq_ptq_w16a8"), ("W8A8", "zq_ptq_w8a8"),
               ("W4/8A16", "zq_ptq_w48a16"))),
    *[_glue(f"zeroquant_table{t}", f"ZeroQuant Table {t[0]}.{t[1]}: ZeroQuant-LKD on BERT-{size}, GLUE dev",
                (("W16A16 (Baseline)", "fp32"), ("W8A8 (ZeroQuant-LKD No Tuning)", "zq_lkd_w8a8"),
                 ("W8A8 (ZeroQuant-LKD Tuned)", None), ("W4/8A16 (ZeroQuant-LKD No Tuning)", "zq_lkd_w48a16"),
                 ("W4/8A16 (ZeroQuant-LKD Tuned)", None), ("W4/8A8 (ZeroQuant-LKD No Tuning)", "zq_lkd_w48a8"),
                 ("W4/8A8 (ZeroQuant-LKD Tuned)", None))) for t, size in (("E1", "base"), ("E2", "large"))],
    *[_glue(f"zeroquant_table{t}", f"ZeroQuant Table {t[0]}.{t[1]}: symmetric vs asymmetric PTQ and ZeroQuant, "
                f"BERT-{size}, GLUE dev",
                (("W16A16 (Baseline)", "fp32"), ("W8A8 (PTQ, Symmetric)", "zq_ptq_w8a8"),
                 ("W8A8 (PTQ, Asymmetric)", "zq_ptq_w8a8_asym"), ("W8A8 (ZeroQuant)", "zq_w8a8")))
      for t, size in (("G5", "base"), ("G6", "large"))],
    _glue("zeroquant_tableG9", "ZeroQuant Table G.9: group-wise (GQ) and token-wise (TQ) quantization, GLUE dev",
              (("W16A16", "fp32"), ("W8A8, GQ no, TQ no", "zq_ptq_w8a8"), ("W8A8, GQ yes, TQ no", "zq_w8a8_gq"),
               ("W8A8, GQ yes, TQ yes", "zq_w8a8"))),
    _glue("zeroquant_tableG12", "ZeroQuant Table G.12: LKD loss, W4/8A8 BERT-base, GLUE dev",
              (("W16A16 (Baseline)", "fp32"), ("W4/8A8 (L1)", "zq_lkd_w48a8_l1"), ("W4/8A8 (L2)", "zq_lkd_w48a8"))),
)

# Table I.1/I.2 rows -> the lm-eval task names that fill them (a local copy counts too)
ZERO_SHOT_ROWS = {"HellaSwag": ["hellaswag"], "LAMBADA": ["lambada_openai"], "TriviaQA": ["triviaqa"],
                  "WebQs": ["webqs"], "Winogrande": ["winogrande"], "PIQA": ["piqa"],
                  "ARC (Challenge)": ["arc_challenge"], "ARC (Easy)": ["arc_easy"], "ANLI R1": ["anli_r1"],
                  "ANLI R2": ["anli_r2"], "ANLI R3": ["anli_r3"], "OpenBookQA": ["openbookqa"], "RACE-h": ["race"],
                  "BoolQ": ["boolq"], "Copa": ["copa"], "RTE": ["sglue_rte", "qexp_rte_local"], "WSC": ["wsc"],
                  "MultiRC": ["multirc"], "ReCoRD": ["record"]}
LM_TABLES = {
    "zeroquant_tableI1": ("ZeroQuant Table I.1: GPT-3-350M zero-shot (ours: the decoder named in the model column, a "
                          "substitute for GPT-3-350M)",
                          {"Baseline W16A16": "fp32", "PTQ W8A16": "zq_ptq_w8a16", "PTQ W16A8": "zq_ptq_w16a8",
                           "PTQ W8A8": "zq_ptq_w8a8", "PTQ W4/8A16": "zq_ptq_w48a16", "ZeroQuant W8A8": "zq_w8a8",
                           "ZeroQuant W4/8A16": "zq_w48a16", "ZeroQuant W4/8A8": "zq_w48a8",
                           "ZeroQuant-LKD W4/8A16": "zq_lkd_w48a16", "ZeroQuant-LKD W4/8A8": "zq_lkd_w48a8"}),
    "zeroquant_tableI2": ("ZeroQuant Table I.2: GPT-3-1.3B zero-shot (ours: – ; no 1.3B decoder runs offline here, and no smaller "
                          "model's numbers are shown under its name: see Table I.1 for SmolLM2-135M)",
                          {"Baseline W16A16": "fp32", "PTQ W8A8": "zq_ptq_w8a8", "PTQ W4/8A16": "zq_ptq_w48a16",
                           "ZeroQuant W8A8": "zq_w8a8", "ZeroQuant W4/8A16": "zq_w48a16",
                           "ZeroQuant W4/8A8": "zq_w48a8", "ZeroQuant-LKD W4/8A16": "zq_lkd_w48a16",
                           "ZeroQuant-LKD W4/8A8": "zq_lkd_w48a8"}),
    "zeroquant_tableI3": ("ZeroQuant Table I.3: W4/8A8 LKD data sources (ours: any decoder)",
                          {"Random Data": "zq_lkd_w48a8_random", "Wikipedia": "zq_lkd_w48a8_text",
                           "Original Training Data": "zq_lkd_w48a8"}),
}
G10 = [("Weight, INT8", "weight", "8", "zq_ptq_w8a8", "zq_w8a8"),
       ("Weight, INT4", "weight", "4", "zq_ptq_w48a16", "zq_w48a16"),
       ("Activation, INT8", "activation", "8", "zq_ptq_w8a8", "zq_w8a8")]


def evaluation_setting(r: dict) -> str:
    """What a language-model number was measured on, so runs on different windows, document limits or inference
    backends never share a table cell: "20440 tokens, context 512", "all docs", "+ backend torch_int"."""
    task = (r.get("config") or {}).get("task") or {}
    parts = []
    if task.get("kind") == "perplexity":
        m = (r.get("metrics") or {}).get("test") or {}
        parts.append(f"{m.get('tokens')} tokens, context {m.get('context_length')}")
    elif task.get("kind") == "lm_eval":
        docs = (task.get("limit") or {}).get("docs")
        parts.append("all docs" if docs is None else f"{docs} docs per task")
    backend = (r.get("inference") or {}).get("backend", "fake")
    if backend != "fake":
        parts.append(f"backend {backend}")
    grid = (((r.get("config") or {}).get("recipe") or {}).get("quant") or {}).get("grid")
    if grid != "deepspeed" and r.get("recipe") != "fp32":   # an FP baseline has no grid (issue 29: it landed apart)   # records before 2026-12-06 used qexp's grid (issue 14 #10): never pooled with the new
        parts.append("qexp grid")
    return "; ".join(parts)


def _records(records: list[dict]) -> pd.DataFrame:
    from .cells import variant

    return pd.DataFrame([{"model": r["model"], "task": r["task"], "recipe": r["recipe"], "seed": r["seed"],
                          "score": r.get("score"), "metrics": r.get("metrics") or {},
                          "relative_error": r.get("relative_error"), "setting": evaluation_setting(r),
                          "variant": variant(r.get("config") or {}), "finished": str(r.get("finished") or ""),
                          "dirty": bool((r.get("git") or {}).get("dirty")), "path": r.get("_path"),
                          "recipe_overrides": cells.recipe_overrides(r.get("overrides")), "stale": cells.stale(r)}
                         for r in records],
                        columns=["model", "task", "recipe", "seed", "score", "metrics", "relative_error", "setting",
                                 "variant", "finished", "dirty", "path", "recipe_overrides", "stale"])


# the paper's model of a table, where it names one qexp could run: other models' numbers never appear under it
PAPER_MODELS = {"zeroquant_tableE2": ("bert_large",), "zeroquant_tableG6": ("bert_large",),
                "zeroquant_tableI2": ()}
PAPER_MODEL_NAMES = {"zeroquant_tableE2": "BERT-large", "zeroquant_tableG6": "BERT-large",
                     "zeroquant_tableI2": "GPT-3 1.3B"}


def _glue_cell(g: pd.DataFrame, split: str, metrics: tuple[str, ...]) -> list[float] | None:
    vals = []
    for m in metrics:
        xs = [r[split][m] for r in g.metrics if split in r and m in r[split]]
        if not xs:
            return None
        vals.append(100 * float(pd.Series(xs).median()))
    return vals


def glue_table(df: pd.DataFrame, spec: TableSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ours: numbers as the paper prints them, e.g. "86.27/90.57"; ours beside the paper, for the Markdown).  One row
    per model, evaluation setting (e.g. "backend cpu_int8") and paper row: runs of different settings never share a
    cell."""
    paper = pd.read_csv(REFERENCE / f"{spec.name}.csv", dtype=str).set_index("configuration")
    sub = df[df.recipe.isin(spec.recipes) & df.task.isin(spec.tasks)]
    if spec.name in PAPER_MODELS:
        sub = sub[sub.model.isin(PAPER_MODELS[spec.name])]
    sub, notes = cells.select(sub, ["model", "setting", "task", "recipe"])
    ours, both = [], []
    pairs = sorted(set(zip(sub.model, sub.setting))) or ([("–", "paper only")] if spec.name in PAPER_MODELS else [])
    for model, setting in pairs:
        mdf = sub[(sub.model == model) & (sub.setting == setting)]
        for label, recipe in spec.rows:
            row, seeds = {"model": model, "setting": setting, "configuration": label}, {}
            avg = []
            for col, task, split, metrics in spec.split_columns:
                g = mdf[(mdf.recipe == recipe) & (mdf.task == task)] if recipe else mdf[:0]
                g = g[g.score.map(cells.finite)]
                vals = _glue_cell(g, split, metrics) if len(g) else None
                row[col] = "/".join(f"{v:.2f}" for v in vals) if vals else ""
                seeds[col] = (int(g.seed.nunique()) if vals else 0, bool(g.dirty.any()) if vals else False)
                avg.append(sum(vals) / len(vals) if vals else None)
            row[spec.average] = f"{sum(avg) / len(avg):.2f}" if all(a is not None for a in avg) else ""
            n = {f"n {c}": seeds[c][0] for c in seeds}
            ours.append({**row, **n})
            both.append({**{k: (f"{_with_n(v, *seeds.get(k, (None, False)))} ({paper.loc[label, k]})"
                                if k not in ("model", "setting", "configuration") else v) for k, v in row.items()}})
    split_cols = [c for c, *_ in spec.split_columns]
    cols = ["model", "setting", "configuration", *split_cols, spec.average]
    return (pd.DataFrame(ours, columns=[*cols, *[f"n {c}" for c in split_cols]]), pd.DataFrame(both, columns=cols),
            notes)


def _with_n(value: str, n, dirty: bool) -> str:
    if not value:
        return cells.DASH
    return value if n is None else f"{value} [{n}]" + (cells.DIRTY_MARK if dirty else "")


def _median_error(g: pd.DataFrame, recipe: str, kind: str, bits: str) -> float | None:
    """Median over seeds of a recipe's mean Eq. 3 error for one kind ("weight"/"activation") and bit-width."""
    xs = [e.get(kind, {}).get(bits) for e in g[g.recipe == recipe].relative_error]
    xs = [x for x in xs if x is not None]
    return float(pd.Series(xs).median()) if xs else None


def table_g10(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, task, evaluation setting) and error kind: grids, backends and window counts never share a
    median (issue 29).  The INT4 weight row takes any recipe with INT4 group-wise weights (``zq_w48a16`` and
    ``zq_w48a8`` quantize the FFN weights to INT4 identically), and its standard counterpart the per-tensor INT4/8
    PTQ recipe."""
    paper = pd.read_csv(REFERENCE / "zeroquant_tableG10.csv").set_index("configuration")
    rows = []
    sub = df.dropna(subset=["relative_error"])
    if len(sub):
        sub, _ = cells.select(sub[sub.relative_error.map(bool)], ["model", "task", "setting", "recipe"])
    for (model, task, setting), g in sub.groupby(["model", "task", "setting"], sort=True):
        group = []
        for label, kind, bits, standard, zq in G10:
            zqs = (zq, "zq_w48a8") if bits == "4" else (zq,)
            group.append({"model": model, "task": task, "setting": setting, "configuration": label,
                          "Standard Quantization": _median_error(g, standard, kind, bits),
                          "GQ or TQ": next((v for v in (_median_error(g, r, kind, bits) for r in zqs)
                                            if v is not None), None),
                          "paper Standard Quantization": paper.loc[label, "Standard Quantization"],
                          "paper GQ or TQ": paper.loc[label, "GQ or TQ"]})
        # a setting none of whose records is a G.10 recipe (its records feed other tables) prints no row of dashes
        if any(r["Standard Quantization"] is not None or r["GQ or TQ"] is not None for r in group):
            rows += group
    return pd.DataFrame(rows, columns=["model", "task", "setting", "configuration", "Standard Quantization",
                                       "GQ or TQ", "paper Standard Quantization", "paper GQ or TQ"])


def lm_table(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """Rows: the paper's tasks + Wikitext-2 (perplexity); columns: ours per recipe, then the paper's, per model."""
    _, columns = LM_TABLES[name]
    paper = pd.read_csv(REFERENCE / f"{name}.csv", dtype=str).set_index("task")
    out = []
    sel = df[df.recipe.isin(columns.values())]
    if name in PAPER_MODELS:   # never another model's numbers under the paper's model name (issue 29)
        sel = sel[sel.model.isin(PAPER_MODELS[name])]
    pairs = sorted(set(zip(sel.model, sel.setting))) or ([("–", "paper only")] if name in PAPER_MODELS else [])
    for model, setting in pairs:
        mdf = sel[(sel.model == model) & (sel.setting == setting)]
        for row, tasks in [*ZERO_SHOT_ROWS.items(), ("Wikitext-2", None)]:
            rec = {"model": model, "task": row, "setting": setting}
            for col, recipe in columns.items():
                g = mdf[mdf.recipe == recipe]
                if tasks is None:
                    xs = g[g.task == "wikitext2"].score.dropna().tolist()
                else:
                    xs = [100 * m[t].get("acc", m[t].get("exact_match", float("nan"))) for m in g.metrics
                          for t in tasks if t in m]
                rec[col] = float(pd.Series(xs).median()) if xs else None
            key = row if row in paper.index else {"Wikitext-2": "Wikitxt-2"}.get(row)  # Table I.1 prints "Wikitxt-2"
            for col in columns:
                rec[f"paper {col}"] = paper.loc[key, col] if key in paper.index else None
            if any(rec[c] is not None for c in columns) or model == "–":
                out.append(rec)
    return pd.DataFrame(out, columns=["model", "task", "setting", *columns, *[f"paper {c}" for c in columns]])


def build(records: list[dict], out_dir: Path) -> dict[str, Path]:
    df = _records(records)
    written = {}
    for spec in GLUE_TABLES:
        ours, both, notes = glue_table(df, spec)
        written[spec.name] = out_dir / f"{spec.name}.csv"
        ours.to_csv(written[spec.name], index=False)
        written[f"{spec.name}.md"] = out_dir / f"{spec.name}.md"
        paper_model = PAPER_MODEL_NAMES.get(spec.name, "BERT-base")
        models = sorted(set(ours.model) - {"–"})
        whose = (f"ours: {', '.join(models)}" if models else
                 f"ours: – ({paper_model} was not run here; no other model's numbers are shown under its name)")
        written[f"{spec.name}.md"].write_text(
            f"{spec.title}. Cells: ours [seeds] (paper, {paper_model}); {whose}; ours is the median over seeds of one "
            f"configuration ({cells.DIRTY_MARK}: a record from a dirty tree); rows without a recipe are the paper's "
            f"only.\n\n" + (both.to_markdown(index=False) if len(both) else "(no runs yet)") + "\n"
            + ("\nNotes:\n\n" + "\n".join(f"- {n}" for n in notes) + "\n" if notes else ""))
    g10 = table_g10(df)
    written["zeroquant_tableG10"] = out_dir / "zeroquant_tableG10.csv"
    g10.to_csv(written["zeroquant_tableG10"], index=False, float_format="%.4f")
    for name, (title, _) in LM_TABLES.items():
        t = lm_table(df, name)
        written[name] = out_dir / f"{name}.csv"
        t.to_csv(written[name], index=False, float_format="%.2f")
        written[f"{name}.md"] = out_dir / f"{name}.md"
        written[f"{name}.md"].write_text(f"{title}. Accuracy x 100 (lm-eval, zero-shot); Wikitext-2: perplexity "
                                         f"(qexp's wikitext2 task; the record says how many tokens).\n\n"
                                         + (t.to_markdown(index=False, floatfmt=".2f") if len(t) else "(no runs yet)")
                                         + "\n")
    return written
