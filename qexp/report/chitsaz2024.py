"""Chitsaz et al. 2024 (quantized pre-training) tables and validation-loss figures from the ``qpt_clm`` run records.

A *setting* is one trained configuration but for the recipe and the seed: model config and task config (corpus,
tokenizer, budget).  Every row of a table compares one qpt recipe with the FP baseline (``recipe=fp32``) of the same
setting and seed (same data order and token budget): final validation loss on the corpus' valid split, WikiText-2 and
PTB test perplexity (our tokenizer and model scale, so not the paper's absolute numbers), the ratio to the baseline's
WikiText-2 perplexity, and the paper's four columns beside them.  WikiText-103 and 1BW are not on this machine: their
"ours" columns stay empty and say so.  A diverged run is a row that says "diverged at step N (reason)", never a
number.  Several seeds: mean over seeds, with the count.

Figures (PNG): validation loss against the training step, one curve per variant with the baseline, as the paper's
Figures 4 (weights), 7 (activations), 9 (gradients), 10 (gradient path), 11 (Adam m1), 12 (Adam m2), 13 (W8A8(G8)).
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path

import pandas as pd

REFERENCE = Path(__file__).parent / "reference" / "chitsaz2024_perplexity.csv"
PAPER = "chitsaz2024"
TABLES = {2: "weights", 3: "activations", 4: "gradients", 5: "Adam first moment", 10: "weights, post-training",
          11: "activations, post-training"}
FIGURES = {
    4: ("weights", ["qpt_w4_tensor", "qpt_w4_channel", "qpt_w8_tensor", "qpt_w8_channel"]),
    7: ("activations", ["qpt_a4_tensor", "qpt_a4_token", "qpt_a4_token_asym", "qpt_a4_token_asym_authors",
                        "qpt_a8_tensor", "qpt_a8_token"]),
    9: ("gradients (weight-gradient GEMM)", ["qpt_g4_tensor", "qpt_g4_token", "qpt_g8_tensor", "qpt_g8_token"]),
    10: ("gradients in the weight path vs both paths", ["qpt_g8_token", "qpt_g8_token_both", "qpt_g4_token",
                                                         "qpt_g4_token_both"]),
    11: ("Adam first moment", ["qpt_m1_4_tensor", "qpt_m1_4_channel", "qpt_m1_8_tensor", "qpt_m1_8_channel",
                               "qpt_m1_8_channel_authors"]),
    12: ("Adam second moment", ["qpt_m2_8_channel", "qpt_m2_8_channel_floor", "qpt_m2_8_channel_authors"]),
    13: ("weights, activations and gradients together", ["qpt_w8a8", "qpt_w8a8g8"]),
}
DOWNSTREAM_REFERENCE = Path(__file__).parent / "reference" / "chitsaz2024_downstream.csv"
DOWNSTREAM_NAMES = {"qexp_glue_mrpc_local": "mrpc", "qexp_glue_rte_local": "rte", "qexp_glue_qnli_local": "qnli",
                    "qexp_glue_sst2_local": "sst2", "qexp_glue_wnli_local": "wnli", "lambada_openai": "lambada"}
DOWNSTREAM_COLUMNS = ("mnli", "mrpc", "rte", "qnli", "sst2", "wnli", "arc_easy", "arc_challenge", "lambada",
                      "hellaswag")
NOT_HERE = "not on this machine (WikiText-103 / One Billion Words are hub-only)"


def is_chitsaz(record: dict) -> bool:
    """A qpt_clm run of this paper: not another paper's recipe on the same trained model (Kwon et al. 2021's
    ``pwq_*`` on the brown_austen decoder), and not a quick evaluation of the held-out texts (``task.heldout_limit``):
    the tables compare full held-out perplexities, which a partial one would replace as the newer record."""
    cfg = record.get("config") or {}
    task, recipe = cfg.get("task") or {}, cfg.get("recipe") or {}
    return (task.get("paper") == PAPER and recipe.get("paper") in (None, PAPER)
            and (task.get("heldout_limit") or {}).get("windows") is None)


def _setting(cfg: dict) -> str:
    """What the trained weights depend on but the recipe and seed: evaluation settings (held-out texts, downstream
    tasks) do not split a setting."""
    task = cfg.get("task") or {}
    key = {"model": cfg.get("model"), "task": {k: task.get(k) for k in ("name", "train", "seq_length", "tokenizer",
                                                                       "data_dir", "hub", "files", "objective")}}
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]


LEFT_OUT: dict[str, int] = {}   # why qpt_clm records were not tabled (filled by frame, read by markdown)


def left_out_reason(record: dict) -> str | None:
    """Why a qpt_clm record of this paper is not in its tables, or None (issue 27 #20: the tables said "no runs yet"
    when runs existed but were left out; issue 27 #2: a run with recipe overrides replaced the recipe's row)."""
    cfg = record.get("config") or {}
    task, recipe = cfg.get("task") or {}, cfg.get("recipe") or {}
    if task.get("paper") != PAPER or recipe.get("paper") not in (None, PAPER):
        return None   # another paper's run: not counted at all
    if (task.get("heldout_limit") or {}).get("windows") is not None:
        return "a quick evaluation (task.heldout_limit.windows set): the tables compare full held-out perplexities"
    from .cells import recipe_overrides

    over = recipe_overrides(record.get("overrides"))
    if over:
        return f"run with recipe overrides ({' '.join(over)}): another configuration than the recipe's row"
    return None


def frame(records: list[dict]) -> pd.DataFrame:
    rows = []
    LEFT_OUT.clear()
    for r in records:
        why = left_out_reason(r)
        if why:
            LEFT_OUT[why] = LEFT_OUT.get(why, 0) + 1
            continue
        if not is_chitsaz(r):
            continue
        cfg, m, pre = r.get("config") or {}, r.get("metrics") or {}, r.get("pretrain") or {}
        a, tr = cfg["model"].get("architecture") or {}, cfg["task"].get("train") or {}
        diverged = pre.get("diverged")
        rows.append({
            "setting": _setting(cfg), "model": r["model"], "recipe": r["recipe"], "seed": r["seed"],
            "scale": (f"{a.get('num_hidden_layers')}L/{a.get('hidden_size')}, {tr.get('max_steps')} steps x "
                      f"{tr.get('batch_size', 0) * tr.get('grad_accum', 1)} x {cfg['task'].get('seq_length')} tok"),
            "val_loss": None if diverged else (m.get("valid") or {}).get("loss"),
            "wikitext2": None if diverged else (m.get("wikitext2") or {}).get("perplexity"),
            "ptb": None if diverged else (m.get("ptb") or {}).get("perplexity"),
            "downstream": {} if diverged else {DOWNSTREAM_NAMES.get(t, t): 100.0 * v.get("acc", float("nan"))
                                                for t, v in (m.get("downstream") or {}).items()},
            "status": _status(diverged, (m.get("valid") or {}).get("loss"), pre.get("curves") or []),
            "curves": pre.get("curves") or [], "path": r.get("_path"), "finished": r.get("finished", "")})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    # one run per (setting, recipe, seed): a re-evaluation under a changed evaluation config (held-out texts,
    # downstream tasks) is a newer record of the same trained model, not another seed
    df = df.sort_values("finished")
    dup = df.duplicated(["setting", "recipe", "seed"], keep="last")
    if dup.any():
        warnings.warn(f"Chitsaz et al. 2024 tables: {int(dup.sum())} older record(s) of the same setting, recipe and "
                      f"seed left out (the newest counts): {sorted(df.path[dup].dropna())}", stacklevel=2)
    return df[~dup].reset_index(drop=True)


def _status(diverged, loss, curves) -> str:
    """"diverged at step N (...)" for a non-finite training loss; "exploded" when a validation loss during training,
    or the final one, is worse than the untrained model's at step 0 (finite, but the paper's "diverges"), so a run
    that blew up and partly recovered is flagged too, with the step of its worst loss; else "ok"."""
    if diverged:
        return f"diverged at step {diverged['step']} ({diverged['reason']})"
    start = curves[0].get("loss") if curves else None
    if start is None:
        return "ok"
    later = [c for c in curves[1:] if c.get("loss") is not None and not math.isnan(c["loss"])]
    worst = max(later, key=lambda c: c["loss"], default=None)
    if loss is not None and loss > start and (worst is None or loss >= worst["loss"]):
        return f"exploded: final validation loss {loss:.3g} > {start:.3g} at step 0"
    if worst is not None and worst["loss"] > start:
        final = f"; final {loss:.3g}" if loss is not None else ""
        return f"exploded: validation loss {worst['loss']:.3g} at step {worst['step']} > {start:.3g} at step 0{final}"
    return "ok"


def _mean(values) -> float | None:
    s = pd.Series([v for v in values if v is not None], dtype=float)
    return float(s.mean()) if len(s) else None


def tables(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, paper table, paper row): ours (mean over seeds) beside the paper's numbers."""
    ref = pd.read_csv(REFERENCE)
    out = []
    settings = df.groupby("setting") if len(df) else []
    for setting, g in settings:
        base = g[g.recipe == "fp32"]
        base_wt2 = _mean(base.wikitext2)
        for _, p in ref.iterrows():
            # issue 31: a recipe's twin with the authors' semantics (recipe.qpt.code=authors: minimum-range floors,
            # 2^b - 1 asymmetric levels, linear-weight Adam states, states quantized on read, X and W saved unquantized)
            # is its own row beside the paper-formula row, never pooled with it
            for recipe, semantics in ((p.recipe, "paper formulas"), (f"{p.recipe}_authors", "authors' code")):
                runs = g[g.recipe == recipe]
                if semantics != "paper formulas" and not len(runs):
                    continue
                status = "; ".join(sorted(set(runs.status))) if len(runs) else "not run"
                wt2 = _mean(runs.wikitext2)
                out.append({
                    "setting": setting, "model": g.model.iloc[0], "scale": g.scale.iloc[0], "table": int(p.table),
                    "component": p.component, "bits": "" if pd.isna(p.bits) else int(p.bits),
                    "granularity": p.granularity, "recipe": recipe, "semantics": semantics, "seeds": len(runs),
                    "status": status,
                    "ours_val_loss": _mean(runs.val_loss), "ours_wikitext2": wt2, "ours_ptb": _mean(runs.ptb),
                    "ours_wikitext2_vs_baseline": (wt2 / base_wt2) if wt2 and base_wt2 else None,
                    "ours_wikitext103": None, "ours_1bw": None,
                    "paper_wikitext103": p.wikitext103, "paper_wikitext2": p.wikitext2, "paper_ptb": p.ptb,
                    "paper_1bw": p["1bw"],
                    "paper_wikitext2_vs_baseline": p.wikitext2 / 34.32 if pd.notna(p.wikitext2) else None,
                    "note": "; ".join(x for x in (p.note if pd.notna(p.note) else "", f"WikiText-103, 1BW: {NOT_HERE}")
                                      if x)})
    return pd.DataFrame(out)


def downstream_tables(df: pd.DataFrame) -> pd.DataFrame:
    """Tables 6-9: few-shot accuracy (%) per task, ours (mean over seeds; the tasks that ran) beside the paper's."""
    ref = pd.read_csv(DOWNSTREAM_REFERENCE)
    out = []
    for setting, g in (df.groupby("setting") if len(df) else []):
        for _, p in ref.iterrows():
            runs = g[g.recipe == p.recipe]
            row = {"setting": setting, "model": g.model.iloc[0], "table": int(p.table), "component": p.component,
                   "bits": "" if pd.isna(p.bits) else int(p.bits), "granularity": p.granularity, "recipe": p.recipe,
                   "seeds": len(runs), "status": "; ".join(sorted(set(runs.status))) if len(runs) else "not run"}
            ours = {c: _mean([d.get(c) for d in runs.downstream]) for c in DOWNSTREAM_COLUMNS}
            ran = [v for v in ours.values() if v is not None]
            row.update({f"ours_{c}": v for c, v in ours.items()})
            row["ours_average_of_run_tasks"] = sum(ran) / len(ran) if ran else None
            row.update({f"paper_{c}": p[c] for c in (*DOWNSTREAM_COLUMNS, "average")})
            out.append(row)
    return pd.DataFrame(out)


def markdown(t: pd.DataFrame) -> str:
    why = "".join(f"- {n} qpt_clm record(s) left out: {reason}\n" for reason, n in sorted(LEFT_OUT.items()))
    if t.empty:
        return ("Chitsaz et al. 2024: no tabled qpt_clm run" + (" (records exist but were left out):\n\n" + why
                                                               if why else " yet (scripts/qpt_cpu.sh)\n"))
    parts = ["Chitsaz et al. 2024, Tables 2-5 and 10-11 at CPU scale: ours (our model, corpus and BPE tokenizer) "
             "beside the paper's GPT-2 small on OpenWebText.  Perplexities are not comparable across the two in "
             "absolute terms; compare each row's ratio to its baseline (`x base`).  WikiText-103 and 1BW: "
             f"{NOT_HERE}.\n"]
    for (setting, table), g in t.groupby(["setting", "table"]):
        parts.append(f"\n### Table {table}: {TABLES[table]} (setting {setting}: {g.model.iloc[0]}, "
                     f"{g.scale.iloc[0]})\n")
        show = pd.DataFrame({
            "#bit": g.bits, "granularity": g.granularity, "recipe": g.recipe, "semantics": g.semantics,
            "ours val loss": g.ours_val_loss, "ours WT-2": g.ours_wikitext2, "ours PTB": g.ours_ptb,
            "ours x base": g.ours_wikitext2_vs_baseline, "paper WT-103": g.paper_wikitext103,
            "paper WT-2": g.paper_wikitext2, "paper PTB": g.paper_ptb, "paper 1BW": g.paper_1bw,
            "paper x base": g.paper_wikitext2_vs_baseline, "status": g.status})
        show = show.astype(object).where(show.notna(), None)   # tabulate leaves None (not NaN) cells empty
        parts.append(show.to_markdown(index=False, floatfmt=".3g", missingval=""))
        parts.append("")
    if why:
        parts += ["Left out of these tables:", "", why]
    return "\n".join(parts) + "\n"


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figures(df: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    if df.empty:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = {}
    for number, (title, recipes) in FIGURES.items():
        for (setting, seed), g in df.groupby(["setting", "seed"]):
            shown = g[g.recipe.isin(["fp32", *recipes])]
            if shown.recipe.nunique() < 2:
                continue
            fig, ax = plt.subplots(figsize=(7, 4.2))
            for _, r in shown.sort_values("recipe", key=lambda s: s.map({"fp32": ""}).fillna(s)).iterrows():
                c = pd.DataFrame(r.curves)
                if c.empty:
                    continue
                label = "baseline (FP)" if r.recipe == "fp32" else r.recipe.removeprefix("qpt_")
                if r.status != "ok":
                    label += " (diverged)" if r.status.startswith("diverged") else " (exploded)"
                ax.plot(c.step, c["loss"], marker=".", lw=2.2 if r.recipe == "fp32" else 1.2,
                        color="black" if r.recipe == "fp32" else None, label=label)
            ax.set_xlabel("training step")
            ax.set_ylabel("validation loss")
            ax.set_yscale("log")
            ax.legend(fontsize=8)
            ax.set_title(f"Figure {number} at CPU scale: {title}\n{g.model.iloc[0]}, {g.scale.iloc[0]}, seed {seed}",
                         fontsize=9)
            path = _save(fig, out_dir / f"chitsaz2024_figure{number}_{setting}_seed{seed}.png")
            written[path.stem] = path
    return written


def build(records: list[dict], out_dir: Path) -> dict[str, Path]:
    df = frame(records)
    t = tables(df)
    written = {"chitsaz2024_tables": out_dir / "chitsaz2024_tables_vs_paper.csv",
               "chitsaz2024_tables.md": out_dir / "chitsaz2024_tables.md"}
    t.to_csv(written["chitsaz2024_tables"], index=False, float_format="%.4g")
    written["chitsaz2024_downstream"] = out_dir / "chitsaz2024_downstream_vs_paper.csv"
    downstream_tables(df).to_csv(written["chitsaz2024_downstream"], index=False, float_format="%.4g")
    written["chitsaz2024_tables.md"].write_text(markdown(t))
    written["chitsaz2024_summary.md"] = out_dir / "chitsaz2024_summary.md"
    written["chitsaz2024_summary.md"].write_text(summary_markdown(df))
    written.update(figures(df, out_dir))
    return written


# -- Appendix B: memory ------------------------------------------------------------------------------------------------
COMPONENTS = ("parameters", "optimizer_states", "gradients", "activations")


def newest_memory_record(bench_dir: Path) -> dict | None:
    files = sorted(Path(bench_dir).glob("memory__*.json")) if Path(bench_dir).exists() else []
    recs = [json.loads(f.read_text()) for f in files]
    return max(recs, key=lambda r: r["finished"]) if recs else None


def build_memory(bench_dir: Path, out_dir: Path) -> dict[str, Path]:
    """From the newest ``qexp bench memory`` record: the measured-vs-analytic check, the analytic Figures 14/15 grid
    (stacked bars of the components at the peak, GiB) and the savings of quantizing each component."""
    rec = newest_memory_record(bench_dir)
    if rec is None:
        return {}
    b = rec["bench"]
    written = {}
    check = pd.DataFrame([{"component": k, "measured_bytes": v, "analytic_bytes": b["analytic"].get(k),
                           "analytic_over_measured": (b["analytic"].get(k) or 0) / v if v else None}
                          for k, v in b["measured"].items()])
    check.insert(0, "case", f"{b['model']} batch {b['batch']} x {b['seq']} tokens, {b['device']}")
    grid = pd.DataFrame(b["grid"]).drop(columns=["shape"])
    sav = pd.DataFrame(b["quantized_savings"])
    for name, f in (("chitsaz2024_memory_check", check), ("chitsaz2024_memory_grid", grid),
                    ("chitsaz2024_memory_savings", sav)):
        written[name] = out_dir / f"{name}.csv"
        f.to_csv(written[name], index=False, float_format="%.6g")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prec = b["grid_precision"]
    for figure, xcol in ((14, "batch"), (15, "seq")):
        g = grid[grid.figure == figure]
        models = list(dict.fromkeys(g.model))
        fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 4), squeeze=False)
        for ax, m in zip(axes[0], models):
            sub = g[g.model == m]
            bottom = pd.Series(0.0, index=sub.index)
            for comp in COMPONENTS:
                vals = sub[f"peak_{comp}"] / 2 ** 30
                ax.bar([str(x) for x in sub[xcol]], vals, bottom=bottom, label=comp.replace("_", " "),
                       hatch=None if comp == "activations" else "//")
                bottom = bottom + vals
            ax.set_title(m.replace("_", " "))
            ax.set_xlabel("batch size (context 1024)" if figure == 14 else "sequence length (batch 4)")
            ax.set_ylabel("peak memory (GiB)")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"Figure {figure} (analytic): peak training memory by component; parameters/states fp32, "
                     f"activations {8 * prec['act_bytes']}-bit, {prec['attention']} attention", fontsize=9)
        path = _save(fig, out_dir / f"chitsaz2024_figure{figure}_memory.png")
        written[path.stem] = path
    return written


# -- the one-row-per-recipe summary (was scripts/qpt_summary.py, pasted into the docs by hand) -----------------------
SUMMARY_DOWNSTREAM = ("mrpc", "qnli", "rte", "sst2", "wnli")   # the GLUE tasks with dev files here


def _num(x, fmt: str) -> str:
    import math

    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return "inf" if math.isinf(x) else format(x, fmt)


def summary_markdown(df: pd.DataFrame) -> str:
    """One row per (setting, recipe): final validation loss, held-out perplexities, the ratio to the setting's FP32
    WikiText-2 perplexity, the status (ok / diverged at step N / exploded) and the 5-shot downstream accuracies; the
    baseline first, then the training variants, then the post-training rows, each in the order they finished."""
    lines = ["Chitsaz et al. 2024 at CPU scale: one row per recipe (seed 0 unless noted), from the qpt_clm records",
             ""]
    if df.empty:
        return "\n".join(lines + ["(no qpt_clm records yet)"]) + "\n"
    for setting, g in df.groupby("setting"):
        base = g[g.recipe == "fp32"].wikitext2.mean()
        g = g.assign(k=[(0 if r == "fp32" else 2 if r.startswith("qpt_ptq_") else 1, f)
                        for r, f in zip(g.recipe, g.finished)])
        lines += [f"setting {setting}: {g.model.iloc[0]}, {g.scale.iloc[0]}", "",
                  "| recipe | seed | final val loss | WikiText-2 ppl | PTB ppl | × baseline (WT-2) | status | downstream "
                  "MRPC / QNLI / RTE / SST-2 / WNLI |", "|---|---|---|---|---|---|---|---|"]
        for _, r in g.sort_values("k").iterrows():
            ds = r.downstream if isinstance(r.downstream, dict) else {}
            down = " / ".join(_num(ds.get(t), ".1f") for t in SUMMARY_DOWNSTREAM) if ds else "–"
            w = r.wikitext2
            ratio = w / base if w is not None and base and not pd.isna(w) and not pd.isna(base) else None
            lines.append(f"| `{r.recipe}` | {r.seed} | {_num(r.val_loss, '.4f')} | {_num(w, '.2f')} | "
                         f"{_num(r.ptb, '.2f')} | {_num(ratio, '.3f')} | {r.status} | {down} |")
        lines.append("")
    return "\n".join(lines)
