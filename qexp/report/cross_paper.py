"""The first cross-paper table (issue 28 #5; none of the papers could print it): does removing outliers make the 2021
remedies unnecessary?  The 2021, 2022 and 2023 PTQ methods on the same models before and after continued pre-training
with vanilla or gated attention (``task=continue_clm`` / ``continue_mlm``, Bondarenko et al. 2023 Table 9's setting).

Rows: methods (FP baseline first); columns: model x variant (the pretrained model, vanilla fine-tuning, gated
fine-tuning at the paper's default setting -- targeted extra runs with another gate learning rate or the FFN term
are Table 9's rows, not columns here).  A cell: validation perplexity, mean ± std over the calibration (and training)
seeds [runs]; a method run with recipe overrides is its own row (the override in the row's name).  Empty cells say
why in the notes.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import bondarenko2023_table9 as t9
from . import cells

NAME = "cross_paper_outliers"
# (row label, recipe, recipe overrides): the FP baseline, then each paper's W8A8 PTQ method
METHODS = [
    ("FP32 (no quantization)", "fp32", ()),
    ("2021: W8A8 per-tensor PTQ (Table 1)", "w8a8_ptq", ()),
    ("2021: MP-PTQ, 16-bit residual sums and FFN input/output (Table 4)", "mp_ptq_r16_io16", ()),
    ("2021: PEG-PTQ (Table 5)", "peg_ptq", ()),
    ("2022: ZeroQuant static W8A8 PTQ baseline", "zq_ptq_w8a8", ()),
    ("2022: ZeroQuant W8A8 (group-wise weights, token-wise activations; 64 groups)", "zq_w8a8", ("recipe.groups=64",)),
    ("2023: W8A8 PTQ protocol (Table 2)", "bq23_w8a8", ()),
]
VARIANTS = [("pretrained", t9.BEFORE), ("vanilla FT", t9.METHOD["vanilla"]),
            ("gated FT", t9.METHOD["gated_finetune"])]
MODELS = [("smollm2_135m", "SmolLM2-135M"), ("minilm_l6", "MiniLM-L6")]
ENCODER_ONLY = {"mp_ptq_r16_io16", "peg_ptq"}   # their site rules name BERT-encoder sites
DECODERS = {"smollm2_135m"}


def table(records: list[dict]) -> tuple[pd.DataFrame, list[str]]:
    df = t9.frame(records)
    notes = []
    if len(df):
        stale = df[df.stale]
        if len(stale):
            notes.append(f"{len(stale)} record(s) with a run id from older code left out")
        df = df[~df.stale]
        default = df.gate_lr.isna() & (df.ffn_l2.fillna(0) == 0)   # the paper's default setting (extra runs: Table 9)
        df = df[default]
    columns = [f"{label}: {v}" for _, label in MODELS for v, _ in VARIANTS]
    rows, reasons = [], {}
    for label, recipe, over in METHODS:
        row = {"method": label}
        for model, mlabel in MODELS:
            for vname, method in VARIANTS:
                col = f"{mlabel}: {vname}"
                g = df[(df.model == model) & (df.method == method) & (df.recipe == recipe)] if len(df) else df
                g = g[g.overrides.map(lambda o: tuple(o) == over)] if len(g) else g
                if len(g) and g.setting.nunique() > 1:   # one configuration per cell: the newest setting
                    g = g[g.setting == g.setting.iloc[-1]]
                    notes.append(f"{label}, {col}: several settings, the last one shown")
                if len(g):
                    row[col] = t9._cell(g.perplexity, bool(g.dirty.any()))
                    continue
                row[col] = cells.DASH
                if recipe in ENCODER_ONLY and model in DECODERS:
                    reasons.setdefault(recipe, f"{label} –: its site rules name BERT-encoder sites "
                                               f"(encoder.layer.*.ffn.*); a decoder has none (not applicable)")
                else:
                    reasons.setdefault(f"{recipe}:{vname}", f"{label}, {col} –: not run yet")
        rows.append(row)
    out = pd.DataFrame(rows, columns=["method", *columns]).astype(object).fillna(cells.DASH)
    return out, notes + list(reasons.values())


def markdown(t: pd.DataFrame, notes: list[str]) -> str:
    head = ("# Across the papers: do the 2021/2022 remedies still matter once the outliers are trained away?\n\n"
            "Validation perplexity (brown_austen valid blocks; lower is better; MiniLM-L6: masked-LM perplexity on "
            "fixed masks) of each paper's W8A8 PTQ method on the pretrained model and after continued pre-training "
            "with vanilla or gated attention (Bondarenko et al. 2023 Table 9's setting at CPU scale, "
            "`task=continue_clm` / `task=continue_mlm`). Cells: mean ± std [runs] over calibration and training "
            "seeds. No paper could print this table: each evaluated its own method on its own models.\n\n")
    return cells.markdown_table(t, head, notes)


def build(records: list[dict], out_dir: Path) -> dict[str, Path]:
    t, notes = table(records)
    written = {NAME: out_dir / f"{NAME}.csv", f"{NAME}.md": out_dir / f"{NAME}.md"}
    t.to_csv(written[NAME], index=False)
    written[f"{NAME}.md"].write_text(markdown(t, notes))
    return written
