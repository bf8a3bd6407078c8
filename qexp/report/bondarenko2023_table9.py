"""Bondarenko et al. 2023, Table 9 (Appendix B.6) at CPU scale: continued pre-training of a pretrained model with
gated attention (``task=continue_clm``: a decoder; ``task=continue_mlm``: a BERT encoder, also with clipped softmax),
from the run records.

One row per *setting* (the model config with its attention variant and the task config: corpus, budget, learning
rate, ``ffn_l2``); the "before fine-tuning" row is the pretrained model as it is (``task.train.max_steps=0``).  Per row:
FP perplexity on the corpus' validation blocks and on WikiText-2 (the first ``heldout_limit`` windows), max inf-norm
(the residual stream: decoder-layer outputs; BERT: the FFN residual sum before the output LayerNorm)
and average kurtosis of the FP model, and -- not in the paper -- W8A8
perplexity under the 2023 PTQ protocol (``bq23_w8a8``: mean +- std over every training x calibration seed).  Cells
say how many runs they hold; a dirty-tree record marks its cell with †; empty cells are ``–`` with the reason in the
notes.  The paper's OPT-1.3B numbers stand beside ours under the paper's model name; ours under our model's.

Figures: max inf-norm, average kurtosis and validation perplexity against the fine-tuning step per row; the gated
rows' learned gates (mean factor per layer and head).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from . import cells

KINDS = ("continue_clm", "continue_mlm")
COLUMNS = ["ours: model", "method", "budget (steps x batch x length)", "lr", "gate lr", "ffn_l2", "FP ppl (valid)",
           "FP ppl (WikiText-2)", "max inf-norm", "avg kurtosis", "W8A8 ppl (valid)", "gates: mean factor (min), heads < 0.5",
           "training seeds",
           "paper (OPT-1.3B): FP16 ppl", "paper: max inf-norm", "paper: avg kurtosis"]
W8A8 = "bq23_w8a8"
PAPER = {   # Table 9 (OPT-1.3B, 4000 steps x 256 x 512 tokens, max LR 1e-5): FP16 ppl, max inf-norm, avg kurtosis
    "vanilla": (29.46, 79.3, 2086),
    "gated_finetune": (29.18, 50.9, 665),
}
METHOD = {"vanilla": "vanilla fine-tuning", "gated_finetune": "fine-tuning with gated attention",
          "clipped": "fine-tuning with clipped softmax"}
BEFORE = "before fine-tuning (the pretrained model)"


def frame(records: list[dict]) -> pd.DataFrame:
    rows = []
    for r in records:
        cfg = r.get("config") or {}
        task = cfg.get("task") or {}
        if task.get("kind") not in KINDS:
            continue
        m = r.get("metrics") or {}
        v = m.get("valid") or {}
        tr = task.get("train") or {}
        steps = int(tr.get("max_steps", 0))
        variant = r.get("attention") or {}
        att = variant.get("name", "vanilla")
        train = {k: v for k, v in tr.items() if not (k == "gate_lr" and v is None)}   # null = absent (older records)
        key = {"model": cfg.get("model"), "task": {**task, "train": train}} if steps else {
            "model": cfg.get("model"), "task": {"max_steps": 0}}
        rows.append({
            "model": r["model"], "base": r.get("base"), "attention": att, "steps": steps, "task": task.get("kind"),
            "method": BEFORE if steps == 0 else METHOD.get(att, att) + (
                f" (γ {variant['gamma']:.4g}, ζ {variant['zeta']:.4g})" if att == "clipped" else ""),
            "warmup": _warmup(r.get("head_warmup")),
            "budget": (f"{steps} x {int(tr.get('batch_size', 0)) * int(tr.get('grad_accum', 1))} x "
                       f"{task.get('seq_length')} tok" if steps else "0"),
            "lr": tr.get("learning_rate") if steps else None, "ffn_l2": float(tr.get("ffn_l2", 0.0)) if steps else None,
            "gate_lr": tr.get("gate_lr") if steps else None,
            "setting": hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10],
            "recipe": r.get("recipe"), "seed": r.get("seed"), "calibration_seed": v.get("calibration_seed"),
            "perplexity": v.get("perplexity"), "wikitext2": (m.get("wikitext2") or {}).get("perplexity"),
            "max_inf_norm": v.get("max_inf_norm"), "avg_kurtosis": v.get("avg_kurtosis"),
            "curves": (r.get("pretrain") or {}).get("curves") or [], "gate_factor": v.get("gate_factor"),
            "dirty": bool((r.get("git") or {}).get("dirty")),
            "stale": cells.stale(r), "overrides": cells.recipe_overrides(r.get("overrides")),
        })
    return pd.DataFrame(rows)


def _warmup(stage: dict | None) -> str | None:
    """The masked-LM head's warm-up (continue_mlm) in words: budget, rate, the validation perplexity it ended at."""
    if not stage:
        return None
    curves = [c for c in stage.get("curves") or [] if c.get("perplexity") is not None]
    end = f"; validation perplexity {curves[-1]['perplexity']:.1f} at its end" if curves else ""
    return (f"a new MLM head warmed up {stage.get('steps')} steps with the encoder frozen (the same for every row of "
            f"the model){end}")


def _cell(values: pd.Series, dirty: bool, digits: int = 2) -> str:
    """mean ± sample std [runs] (Table 2's statistic, :func:`.bondarenko2023._stat`), † from a dirty tree."""
    from .bondarenko2023 import _stat

    mean, std, n = _stat([float(x) for x in values if cells.finite(x)])
    if mean is None:
        return cells.DASH
    text = f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "") + f" [{n}]"
    return text + (cells.DIRTY_MARK if dirty else "")


def _gates(fp: pd.DataFrame) -> str:
    """The gates of the FP model(s): the mean factor over layers and heads, the smallest head's, and how many heads
    pass less than half their pretrained output (seed 0's record when there are several)."""
    g = [r for r in fp.sort_values("seed").gate_factor if isinstance(r, list) and r]
    if not g:
        return cells.DASH
    flat = [f for layer in g[0] for f in layer]
    return (f"{sum(flat) / len(flat):.3f} ({min(flat):.3f}), {sum(f < 0.5 for f in flat)} of {len(flat)}")


def table(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    notes = []
    if len(df):
        stale = df[df.stale]
        if len(stale):
            notes.append(f"{len(stale)} record(s) with a run id from older code left out")
        over = df[df.overrides.map(bool)]
        if len(over):
            notes.append(f"{len(over)} record(s) run with recipe overrides left out (another configuration)")
        df = df[~df.stale & ~df.overrides.map(bool)]
    rows, notes_extra = [], set()
    order = {BEFORE: 0, METHOD["vanilla"]: 1, METHOD["gated_finetune"]: 2}
    # the decoder first (the paper's Table 9 is OPT's), then the encoders; models in name order within a kind
    models = [m for _, m in sorted({(KINDS.index(t), m) for t, m in zip(df.task, df.model)})] if len(df) else []
    for _, g in (df.groupby("setting", sort=False) if len(df) else []):
        first = g.iloc[0]
        fp, q = g[g.recipe == "fp32"], g[g.recipe == W8A8]
        default = first.gate_lr is None or first.gate_lr != first.gate_lr   # null (NaN in the frame)
        extra = bool(first.steps) and (not default or (first.ffn_l2 or 0) > 0)
        paper = PAPER.get(first.attention) if first.steps and not extra else None
        rows.append({
            "ours: model": first.model, "method": first.method, "budget (steps x batch x length)": first.budget,
            "lr": first.lr if first.lr is not None else cells.DASH,
            "ffn_l2": first.ffn_l2 if first.ffn_l2 is not None else cells.DASH,
            "gate lr": (first.gate_lr if first.gate_lr is not None and first.gate_lr == first.gate_lr
                        else ("= lr" if first.attention == "gated_finetune" and first.steps else cells.DASH)),
            "FP ppl (valid)": _cell(fp.perplexity, bool(fp.dirty.any())),
            "FP ppl (WikiText-2)": _cell(fp.wikitext2, bool(fp.dirty.any())) if first.task != "continue_mlm"
            else cells.DASH,
            "max inf-norm": _cell(fp.max_inf_norm, bool(fp.dirty.any()), 1),
            "avg kurtosis": _cell(fp.avg_kurtosis, bool(fp.dirty.any()), 1),
            "W8A8 ppl (valid)": _cell(q.perplexity, bool(q.dirty.any())),
            "gates: mean factor (min), heads < 0.5": _gates(fp),
            "training seeds": int(fp.seed.nunique()) if len(fp) else 0,
            "paper (OPT-1.3B): FP16 ppl": paper[0] if paper else cells.DASH,
            "paper: max inf-norm": paper[1] if paper else cells.DASH,
            "paper: avg kurtosis": paper[2] if paper else cells.DASH,
            "_order": (models.index(first.model), order.get(first.method, 3), extra, str(first.lr),
                       0 if default else float(first.gate_lr), float(first.ffn_l2 or 0))})
        if first.task == "continue_mlm":
            notes_extra.add(f"FP ppl (WikiText-2) – on the {first.model} rows: a masked LM has no running-text "
                            f"perplexity (its valid column scores fixed masks, task.eval_mask_seed)")
            if first.attention == "clipped" and first.steps:
                notes_extra.add(f"{first.method}: not in the paper's Table 9 (its clipped softmax is trained from "
                                f"scratch, Tables 1-2); paper – on that row")
            warm = [w for w in g.warmup if isinstance(w, str)]
            if warm:
                notes_extra.add(f"{first.model}: {warm[0]}")
        if extra:
            glr = first.gate_lr if not default else "= lr"
            notes_extra.add(f"{first.model}, {first.method}, gate lr {glr}, ffn_l2 "
                            f"{first.ffn_l2}: a targeted extra run (the paper has no such row; its numbers are on "
                            f"the default row)")
    out = pd.DataFrame(rows, columns=COLUMNS + ["_order"])
    if len(out):
        out = out.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)
    for method, (ppl, inf, kurt) in PAPER.items():
        if not len(out) or not (out.method == METHOD[method]).any():
            out = pd.concat([out, pd.DataFrame([{"ours: model": cells.DASH, "method": METHOD[method],
                                                  "paper (OPT-1.3B): FP16 ppl": ppl, "paper: max inf-norm": inf,
                                                  "paper: avg kurtosis": kurt}])], ignore_index=True)
            notes.append(f"{METHOD[method]}: not run yet (CPU time; `make table9-bondarenko2023`)")
    ours = out[out["ours: model"] != cells.DASH]
    if (ours["W8A8 ppl (valid)"].fillna(cells.DASH) == cells.DASH).any():
        notes.append("W8A8 –: no bq23_w8a8 record of that row yet (the paper has no W8A8 column)")
    notes.append("paper – on the before-fine-tuning row: Table 9 does not report the pretrained model")
    notes += sorted(notes_extra)
    return out.reindex(columns=COLUMNS).astype(object).fillna(cells.DASH), notes


def markdown(t: pd.DataFrame, notes: list[str]) -> str:
    head = ("# Bondarenko et al. 2023, Table 9 (Appendix B.6) at CPU scale: continued pre-training with gated "
            "attention\n\nOurs: the pretrained model named in the first column, fine-tuned on brown_austen (its own "
            "tokens; SmolLM2-135M as a causal LM, `task=continue_clm`; MiniLM-L6 as a masked LM, `task=continue_mlm`); "
            "the paper: OPT-1.3B, 4000 steps x 256 x 512 tokens, max LR 1e-5. Cells: mean ± std [runs]; FP columns "
            "over training seeds, W8A8 over training x calibration seeds (the 2023 PTQ protocol, bq23_w8a8). max "
            "inf-norm: the residual stream (decoder: the decoder-layer outputs; BERT: the FFN residual sum before "
            "the output LayerNorm), averaged per sample; kurtosis: non-excess, averaged over the authors' tensors.\n\n")
    return cells.markdown_table(t, head, notes)


def figures(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    fp = df[(df.recipe == "fp32") & (df.steps > 0)] if len(df) else df
    if not len(fp):
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(fp.model))   # one row of panels per model: their scales differ by 100x
    fig, axes = plt.subplots(len(models), 3, figsize=(15, 4 * len(models)), squeeze=False)
    for row, model in zip(axes, models):
        for _, r in fp[fp.model == model].iterrows():
            c = pd.DataFrame(r.curves)
            if c.empty:
                continue
            label = f"{r.attention} lr {r.lr}" + (f" gate lr {r.gate_lr}" if r.gate_lr == r.gate_lr and r.gate_lr
                                                   else "") + f" λ {r.ffn_l2} s{r.seed}"
            for ax, col in zip(row, ("max_inf_norm", "avg_kurtosis", "perplexity")):
                if col in c:
                    ax.plot(c.step, c[col], marker=".", label=label)
        for ax, col in zip(row, ("max inf-norm (residual stream)", "avg kurtosis", "validation perplexity")):
            ax.set_xlabel("fine-tuning step")
            ax.set_title(f"{model}: {col}")
        row[0].legend(fontsize=7)
    fig.suptitle("Bondarenko et al. 2023 Table 9 at CPU scale: outliers during continued pre-training")
    path = out_dir / "bondarenko2023_table9_curves.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths = [path]
    gated = [r for _, r in fp.iterrows() if isinstance(r.gate_factor, list) and r.gate_factor]
    if gated:   # the learned gates: mean factor per layer (rows) and head (columns)
        fig, axes = plt.subplots(1, len(gated), figsize=(4 * len(gated), 6), squeeze=False)
        for ax, r in zip(axes[0], gated):
            im = ax.imshow(r.gate_factor, vmin=0, vmax=max(1.0, max(max(h) for h in r.gate_factor)), cmap="viridis",
                           aspect="auto")
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
            ax.set_title(f"{r.model} gate lr {r.gate_lr or r.lr} λ {r.ffn_l2} s{r.seed}", fontsize=8)
            plt.colorbar(im, ax=ax, fraction=0.046)
        fig.suptitle("mean gate factor sigmoid(G(x)) / π_init after fine-tuning (1: as pretrained)")
        path = out_dir / "bondarenko2023_table9_gates.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def build(records: list[dict], out_dir: Path) -> dict[str, Path]:
    df = frame(records)
    t, notes = table(df)
    written = {"bondarenko2023_table9": out_dir / "bondarenko2023_table9.csv",
               "bondarenko2023_table9.md": out_dir / "bondarenko2023_table9.md"}
    t.to_csv(written["bondarenko2023_table9"], index=False)
    written["bondarenko2023_table9.md"].write_text(markdown(t, notes))
    for fig in figures(df, out_dir):
        written[fig.stem] = fig
    return written
