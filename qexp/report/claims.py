"""The papers' qualitative claims, checked against our cells (issue 29): supported / contradicted / untested.

Each claim compares two rows (recipes) of the same model and task: ``better`` must score higher than ``worse`` (the
task score, higher is better).  Per (model, task) the verdict rests on the medians over seeds of the two cells, both
from the cells the tables print (:mod:`.cells` rules: one configuration per cell, current run ids, no recipe
overrides); the seed spread (max - min over seeds) of each cell is printed beside it, and a difference smaller than
the larger spread is marked "within seed spread" -- a contradiction on MiniLM is stated, never hidden.  A claim whose
cells are missing is "untested" with the missing rows named.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from . import cells


@dataclass(frozen=True)
class Claim:
    paper: str
    text: str
    better: str            # the recipe that should score higher
    worse: str             # the recipe it is compared with
    where: str             # the table(s) whose cells it rests on


CLAIMS = (
    Claim("Bondarenko et al. 2021", "W8A8's degradation comes from the activations: weights-only W8A32 scores above "
          "activations-only W32A8", "w8a32_ptq", "w32a8_ptq", "Table 1"),
    Claim("Bondarenko et al. 2021", "Mixed precision (16-bit FFN residual/input/output and head) recovers W8A8 PTQ",
          "mp_ptq_r16_io16_out16", "w8a8_ptq", "Tables 4, 6"),
    Claim("Bondarenko et al. 2021", "Per-embedding-group PTQ (6 groups + P, FFN) recovers W8A8 PTQ", "peg_ptq",
          "w8a8_ptq", "Tables 5, 6"),
    Claim("Bondarenko et al. 2021", "The permutation (+P) helps per-embedding-group PTQ (3 groups)", "peg_k3p_ffn",
          "peg_k3_ffn", "Table 5"),
    Claim("Bondarenko et al. 2021", "Leaving the FFN residual sum in FP32 recovers most of W32A8's loss "
          "(leave-one-out: better than quantizing all)", "loo_ffn_residual", "loo_all", "Table 2"),
    Claim("Bondarenko et al. 2021", "Token embeddings tolerate 6 bits far better than 2 bits (W8A32 PTQ)",
          "w8a32_emb6_ptq", "w8a32_emb2_ptq", "Table 12"),
    Claim("Bondarenko et al. 2021", "W8A8 QAT (learnable ranges) recovers W8A8 PTQ", "qat_w8a8", "w8a8_ptq",
          "Table 6"),
    Claim("Bondarenko et al. 2021", "AdaRound recovers W4A32 PTQ (round-to-nearest)", "w4a32_adaround", "w4a32_ptq",
          "Tables 7, 12"),
    Claim("ZeroQuant 2022", "Group-wise weights (GQ) improve on per-tensor symmetric PTQ W8A8", "zq_w8a8_gq",
          "zq_ptq_w8a8", "Table G.9"),
    Claim("ZeroQuant 2022", "Token-wise activations (TQ) on top of GQ improve further", "zq_w8a8", "zq_w8a8_gq",
          "Table G.9"),
    Claim("ZeroQuant 2022", "Asymmetric PTQ W8A8 beats symmetric PTQ W8A8 on BERT", "zq_ptq_w8a8_asym", "zq_ptq_w8a8",
          "Table G.5"),
    Claim("ZeroQuant 2022", "LKD helps W4/8A8", "zq_lkd_w48a8", "zq_w48a8", "Table E.1"),
)
COLUMNS = ["paper", "claim", "rests on", "model", "task", "better row", "better [seeds] (spread)", "worse row",
           "worse [seeds] (spread)", "difference", "verdict"]


def _cell(g: pd.DataFrame) -> tuple[float | None, int, float | None]:
    ok = g[g.score.map(cells.finite)]
    if not len(ok):
        return None, 0, None
    return float(ok.score.median()), int(ok.seed.nunique()), float(ok.score.max() - ok.score.min())


def check(df: pd.DataFrame) -> pd.DataFrame:
    """One row per claim and (model, task) that ran either of its recipes; ``df`` is :func:`.tables.frame`."""
    rows = []
    recipes = {r for c in CLAIMS for r in (c.better, c.worse)}
    from .spec import GLUE_TASKS

    # the claims are about GLUE scores (higher is better); the label-free task's score is an error, a perplexity
    # task's a perplexity: both lower-is-better and not what the papers claim about
    glue = df[df.recipe.isin(recipes) & df.task.isin(list(GLUE_TASKS))] if len(df) else df
    sub, _ = cells.select(glue, ["model", "task", "recipe"]) if len(glue) else (glue, [])
    for c in CLAIMS:
        pairs = sorted(set(zip(sub.model, sub.task))) if len(sub) else []
        pairs = [(m, t) for m, t in pairs if len(sub[(sub.model == m) & (sub.task == t) &
                                                     sub.recipe.isin([c.better, c.worse])])]
        if not pairs:
            rows.append({"paper": c.paper, "claim": c.text, "rests on": c.where, "model": cells.DASH,
                         "task": cells.DASH, "better row": c.better, "worse row": c.worse,
                         "verdict": "untested (neither row has run)"})
            continue
        for model, task in pairs:
            g = sub[(sub.model == model) & (sub.task == task)]
            b, w = _cell(g[g.recipe == c.better]), _cell(g[g.recipe == c.worse])
            row = {"paper": c.paper, "claim": c.text, "rests on": c.where, "model": model, "task": task,
                   "better row": c.better, "worse row": c.worse,
                   "better [seeds] (spread)": _fmt(b), "worse [seeds] (spread)": _fmt(w)}
            if b[0] is None or w[0] is None:
                missing = c.better if b[0] is None else c.worse
                row["verdict"] = f"untested ({missing} not run on {task})"
            else:
                d = b[0] - w[0]
                noise = max(b[2] or 0.0, w[2] or 0.0)
                row["difference"] = round(d, 2) + 0.0   # no "-0"
                row["verdict"] = ("supported" if d > 0 else "contradicted" if d < 0 else "tie") + (
                    " (within seed spread)" if abs(d) < noise else "" if min(b[1], w[1]) > 1 else " (one seed)")
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


# Bondarenko et al. 2023, Table 9: gated fine-tuning against vanilla fine-tuning of the same pretrained model (lower is
# better for every column); each from the FP records of the two rows (default settings: lr, no gate_lr, no ffn_l2)
TABLE9 = (("max_inf_norm", "Gated-attention fine-tuning lowers the max inf-norm of a pretrained model against vanilla "
                           "fine-tuning (OPT-1.3B: 79.3 -> 50.9)"),
          ("avg_kurtosis", "Gated-attention fine-tuning lowers the average kurtosis against vanilla fine-tuning "
                           "(OPT-1.3B: 2086 -> 665)"),
          ("perplexity", "Gated-attention fine-tuning does not cost FP perplexity (OPT-1.3B: 29.46 -> 29.18)"))


def check_table9(records: list[dict]) -> pd.DataFrame:
    """Table 9's claims on our continued pre-training records: per model, the vanilla and the gated row of the default
    settings (the same budget and rates; ``gate_lr`` null, ``ffn_l2`` 0), mean over training seeds."""
    from . import bondarenko2023_table9 as t9

    df = t9.frame(records)
    rows = []
    if len(df):
        df = df[~df.stale & ~df.overrides.map(bool) & (df.recipe == "fp32") & (df.steps > 0)
                & (df.ffn_l2 == 0) & df.gate_lr.isna()]
    for col, text in TABLE9:
        pairs = []
        for model, g in (df.groupby("model") if len(df) else []):
            v, gt = g[g.attention == "vanilla"], g[g.attention == "gated_finetune"]
            pairs.append((model, v, gt, str(g.task.iloc[0])))
        if not pairs:
            rows.append({"paper": "Bondarenko et al. 2023", "claim": text, "rests on": "Table 9", "model": cells.DASH,
                         "task": cells.DASH, "better row": "gated_finetune", "worse row": "vanilla",
                         "verdict": "untested (neither row has run)"})
        for model, v, gt, task in pairs:
            b = (float(gt[col].mean()), int(gt.seed.nunique()), float(gt[col].max() - gt[col].min())) if len(gt) \
                else (None, 0, None)
            w = (float(v[col].mean()), int(v.seed.nunique()), float(v[col].max() - v[col].min())) if len(v) \
                else (None, 0, None)
            row = {"paper": "Bondarenko et al. 2023", "claim": text, "rests on": "Table 9", "model": model,
                   "task": task, "better row": "gated_finetune", "worse row": "vanilla",
                   "better [seeds] (spread)": _fmt(b), "worse [seeds] (spread)": _fmt(w)}
            if b[0] is None or w[0] is None:
                row["verdict"] = f"untested ({'gated_finetune' if b[0] is None else 'vanilla'} not run)"
            else:
                d = w[0] - b[0]   # lower is better: positive = the gated row is lower
                noise = max(b[2] or 0.0, w[2] or 0.0)
                ok = d > 0 if col != "perplexity" else d >= 0
                row["difference"] = round(-d, 2) + 0.0
                word = "supported" if ok else "tie" if d == 0 else "contradicted"
                row["verdict"] = word + (
                    " (within seed spread)" if abs(d) < noise else "" if min(b[1], w[1]) > 1 else " (one seed)")
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def _fmt(c: tuple) -> str:
    value, n, spread = c
    if value is None:
        return cells.DASH
    return f"{value:.2f} [{n}]" + (f" ({spread:.2f})" if n > 1 else "")


def markdown(t: pd.DataFrame) -> str:
    return ("Claims check: each paper's qualitative claims against our cells (median over seeds [seeds] (max - min "
            "over seeds)); \"within seed spread\": the difference is smaller than a cell's spread.  Models are ours "
            "(MiniLM-L6 where the papers used BERT-base), so a contradiction is a finding about this setting.\n\n"
            + t.to_markdown(index=False) + "\n")
