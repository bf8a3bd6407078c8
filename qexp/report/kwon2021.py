"""Kwon et al. 2021 (importance-weighted binary-coding quantization) tables and the search-trace figure, from the
``pwq_*`` run records, in the captions' layouts (``../shared/papers/kwon2021_weighted_ptq_table_captions.txt``).

The paper's numbers are not available here (only its captions are), so every table holds our values only and says so
in its notes; rows for the paper's models that cannot run here (BERT-base, DistilBERT, Longformer, AWD-LSTM,
Transformer NMT) stay in the layouts, empty, with the reason.  A cell is the mean over the seeds of the runs that
match it (the count is in the CSV).  "Test score" is the task's score on its evaluation split (GLUE: the mean of the
task's metrics x100; perplexity: lower is better).  Training loss / metric are the quantized model's on training rows
(``train_objective``, the same data as the search objective).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

PAPER = "kwon2021"
NOT_HERE = ("BERT-base, DistilBERT-base, Longformer, AWD-LSTM and the NMT Transformer are not on this machine (hub "
            "only); their rows stay empty")
NOTE = ("The paper's numbers are not available here (only the table captions are): the values are ours, on the "
        "models of this machine.")
LOWER_IS_BETTER = ("perplexity", "pretrain_clm", "pretrain_mlm")   # task kinds whose score is a perplexity
PAPER_MODELS = ("bert_base", "distilbert_base", "longformer", "awd_lstm", "transformer_nmt")


def is_kwon(record: dict) -> bool:
    return ((record.get("config") or {}).get("recipe") or {}).get("paper") == PAPER


def _method(bcq_cfg: dict | None, rounds) -> str:
    if not bcq_cfg or not bcq_cfg.get("enabled", True):
        return "uniform"
    scheme = bcq_cfg.get("scheme", "bcq")
    if scheme != "bcq":
        return {"uniform_minmax": "uniform (per-row step)", "uniform_weighted_mse": "uniform (MSE step)"}.get(scheme,
                                                                                                           scheme)
    return {0: "greedy", 1: "refined greedy"}.get(int(rounds), "alternating")


def frame(records: list[dict]) -> pd.DataFrame:
    rows = []
    for r in records:
        if not is_kwon(r):
            continue
        recipe = r["config"]["recipe"]
        b = recipe.get("bcq") or {}
        search = ((r.get("bcq") or {}).get("search") or {})
        layers = (r.get("bcq") or {}).get("layers") or []
        mode = search.get("mode") or ("reloaded" if b.get("params_from") else "none")
        tobj = r.get("train_objective") or {}
        E, C, P = (b.get(k) for k in ("E", "C", "P"))
        weighted = mode != "none" or (b.get("enabled", True) and (E, C, P) != (0.0, 1.0, 0.0))
        rows.append({
            "model": r["model"], "task": r["task"], "recipe": r["recipe"], "seed": r["seed"],
            "kind": ((r["config"].get("task") or {}).get("kind")),
            "bits": recipe["quant"]["weights"]["bits"], "method": _method(b, b.get("rounds", 15)),
            "weighted": bool(weighted), "E": E if mode == "none" else None, "C": C if mode == "none" else None,
            "P": P if mode == "none" else None, "set": b.get("set") if r["recipe"] == "pwq_manual" else None,
            "group_size": b.get("group_size"), "search": mode, "objective": search.get("objective"),
            "trials": len(search.get("trials") or []) or None, "samples": (search.get("data") or {}).get("samples"),
            "best_params": search.get("best", {}).get("params"), "trace": search.get("trials") or [],
            "direction": search.get("direction"),
            "score": r.get("score"), "train_loss": tobj.get("loss"), "train_metric": tobj.get("metric"),
            "mse": tobj.get("weight_mse", sum(x["mse"] for x in layers) / len(layers) if layers else None),
            "avg_alpha": (sum(a) / len(a)) if (a := [x["avg_alpha"] for x in layers
                                                      if x.get("avg_alpha") is not None]) else None,
            "bcq_seconds": (r.get("bcq") or {}).get("seconds"),
            "quantize_s": (search.get("seconds_per_trial") or {}).get("quantize_mean"),
            "evaluate_s": (search.get("seconds_per_trial") or {}).get("evaluate_mean"),
            "finished": r.get("finished", ""), "commit": ((r.get("git") or {}).get("commit") or "")[:10]})
    return pd.DataFrame(rows)


def _mean(g: pd.DataFrame, cols) -> dict:
    out = {c: g[c].astype(float).mean() if g[c].notna().any() else None for c in cols}
    out["seeds"] = int(g.seed.nunique())
    return out


def _label(method: str, weighted: bool) -> str:
    return f"{method.capitalize()}, {'weighted (E = 1)' if weighted else 'unweighted'}"


def table1(df: pd.DataFrame, bits: int | None) -> pd.DataFrame:
    """Tables 1 (3 bits) / 15 (every bit width): MSE, average alpha, training loss and metric per method, unweighted
    and with E = 1 (no C, no P), plus the uniform baseline; the test score beside them."""
    if df.empty:
        return pd.DataFrame()
    sel = df[(df.search == "none") & (df.set.isna()) & (df.group_size.isna())]
    sel = sel[(~sel.weighted) | ((sel.E == 1.0) & (sel.C == 1.0) & (sel.P == 0.0))]
    if bits is not None:
        sel = sel[sel.bits == bits]
    rows = []
    for (model, task, b, method, w), g in sel.groupby(["model", "task", "bits", "method", "weighted"]):
        uniform = {"uniform": "Uniform (RTN, min-max per row)", "uniform (per-row step)": "Uniform (RTN, min-max per "
                   "row; bcq step)", "uniform (MSE step)": "Uniform (RTN, MSE step; ours)"}
        rows.append({"model": model, "task": task, "bits": b,
                     "method": uniform[method] + (", weighted" if w else "") if method in uniform else _label(method, w),
                     **_mean(g, ["mse", "avg_alpha", "train_loss", "train_metric", "score"])})
    return pd.DataFrame(rows)


def table_ecp(df: pd.DataFrame, bits: int | None) -> pd.DataFrame:
    """Tables 2 (3 bits) / 6 (4 bits) / 16 (every bit width): the test score of Alternating for each (E, C, P): the
    16 manual sets and the unweighted row; columns are the models/tasks."""
    if df.empty:
        return pd.DataFrame()
    sel = df[(df.method == "alternating") & (df.search == "none") & df.group_size.isna()]
    if bits is not None:
        sel = sel[sel.bits == bits]
    if sel.empty:
        return pd.DataFrame()
    sel = sel.assign(column=sel.model + "/" + sel.task + (" " + sel.bits.astype(str) + "-bit" if bits is None else ""),
                     row=sel.apply(lambda r: (f"set {int(r.set)}: " if pd.notna(r.set) else "") +
                                   f"E={r.E:g}, C={r.C:g}, P={r.P:g}", axis=1))
    wide = sel.pivot_table(index="row", columns="column", values="score", aggfunc="mean").reset_index()
    order = {row: (0 if not row.startswith("set") else int(row.split(":")[0][4:])) for row in wide.row}
    return wide.sort_values("row", key=lambda s: s.map(order)).rename(columns={"row": "E, C, P"})


def _best_manual(sel: pd.DataFrame, higher: bool) -> pd.DataFrame:
    """Per (model, task, bits): the manual set with the best mean test score (the paper reports the best by test
    score)."""
    m = sel[sel.set.notna() & (sel.search == "none")]
    if m.empty:
        return m
    means = m.groupby(["model", "task", "bits", "set"]).score.mean().reset_index()
    pick = means.loc[(means.groupby(["model", "task", "bits"]).score.idxmax() if higher else
                      means.groupby(["model", "task", "bits"]).score.idxmin())]
    return m.merge(pick[["model", "task", "bits", "set"]], on=["model", "task", "bits", "set"])


def higher_is_better(task_rows: pd.DataFrame) -> bool:
    """Whether a higher test score is better: not for perplexity (the perplexity kind, and the pre-training kinds,
    whose score is the validation perplexity)."""
    return not task_rows.kind.isin(LOWER_IS_BETTER).any()


def searched(g: pd.DataFrame, mode: str, objective: str | None = "loss",
             method: str | None = "alternating") -> pd.DataFrame:
    """The runs of one search mode (and objective, and quantizer method; None: every one), only the largest trial
    budget per (model, task, bits, method, objective): a longer search of the same setting supersedes a shorter one
    instead of being averaged with it."""
    s = g[g.search == mode]
    if method is not None:
        s = s[s.method == method]
    if objective is not None:
        s = s[s.objective == objective]
    if s.empty:
        return s
    top = s.groupby(["model", "task", "bits", "method", "objective"]).trials.transform("max")
    return s[s.trials == top]


def table3(df: pd.DataFrame) -> pd.DataFrame:
    """Table 3: rows = quantizer x {no importance, best manual set, model-wise BO, layer-wise BO}; columns =
    model/task at 2, 3, 4 bits; plus the paper's models as empty columns."""
    if df.empty:
        return pd.DataFrame()
    base = df[df.group_size.isna()]
    parts = []
    for (model, task), g in base.groupby(["model", "task"]):
        higher = higher_is_better(g)
        cells = {
            "Uniform": g[g.method == "uniform"],
            "Uniform, MSE step (ours)": g[(g.method == "uniform (MSE step)") & ~g.weighted],
            "Greedy": g[(g.method == "greedy") & ~g.weighted],
            "Alternating": g[(g.method == "alternating") & ~g.weighted],
            "Alternating + importance (best manual set)": _best_manual(g[g.method == "alternating"], higher),
            "Alternating + importance (model-wise BO)": searched(g, "model"),
            "Alternating + importance (layer-wise BO, 'Ours')": searched(g, "layer"),
        }
        for row, c in cells.items():
            for b, cb in c.groupby("bits"):
                parts.append({"method": row, "column": f"{model}/{task} {b}-bit", "score": cb.score.mean()})
    if not parts:
        return pd.DataFrame()
    wide = pd.DataFrame(parts).pivot_table(index="method", columns="column", values="score",
                                           aggfunc="mean").reset_index()
    order = ["Uniform", "Uniform, MSE step (ours)", "Greedy", "Alternating", "Alternating + importance (best manual set)",
             "Alternating + importance (model-wise BO)", "Alternating + importance (layer-wise BO, 'Ours')"]
    wide = wide.set_index("method").reindex(order).reset_index()
    for m in PAPER_MODELS:
        wide[f"{m} (paper model)"] = None
    return wide


def table4(df: pd.DataFrame) -> pd.DataFrame:
    """Table 4: the data and budget of each BO search (training rows used by the objective, trials)."""
    s = df[df.search.isin(["model", "layer"])] if not df.empty else df
    if s.empty:
        return pd.DataFrame()
    keys = ["model", "task", "bits", "search", "objective"]
    out = (s.groupby(keys).agg(samples=("samples", "max"), max_trials=("trials", "max"), runs=("seed", "size"))
           .reset_index())
    # seconds per trial: the newest run of each (bit width, search) only, with the commit that measured it (issue 29:
    # one mean pooled bit widths and a run from before the BCQ speed-up, 9.49 s per trial against 2.7-3.1 s now)
    newest = s.sort_values("finished", kind="stable").groupby(keys).tail(1)
    newest = newest[keys + ["quantize_s", "evaluate_s", "commit"]].rename(
        columns={"quantize_s": "quantize_s_per_trial (newest run)", "evaluate_s": "evaluate_s_per_trial (newest run)",
                 "commit": "timed at commit"})
    return out.merge(newest, on=keys, how="left")


def table5(manual_sets: dict) -> pd.DataFrame:
    """Table 5: the 16 manual sets (as composed from recipe pwq_manual)."""
    return pd.DataFrame([{"set": int(k), **v} for k, v in manual_sets.items()]).sort_values("set")


def table7(df: pd.DataFrame) -> pd.DataFrame:
    """Table 7: unweighted Alternating with different numbers of weights sharing the alphas ("one row": a row each).
    The caption's bit width is 3; other widths that ran (SmolLM2 at 4 bits) get their own rows."""
    sel = df[(df.method == "alternating") & (df.search == "none") & df.set.isna() & ~df.weighted] \
        if not df.empty else df
    if sel.empty:
        return pd.DataFrame()
    sel = sel.assign(group=sel.group_size.apply(lambda v: "one row" if pd.isna(v) else str(int(v))),
                     order=sel.group_size.fillna(float("inf")))
    return (sel.groupby(["model", "task", "bits", "order", "group"])
            .agg(score=("score", "mean"), mse=("mse", "mean"), seeds=("seed", "nunique")).reset_index()
            .drop(columns="order"))


def table_search(df: pd.DataFrame) -> pd.DataFrame:
    """Tables 8/9/11/13 (and 17's optimal settings): manual search vs model-wise vs layer-wise BO per model, task
    and bit width: the best setting, its training objective and its test score."""
    if df.empty:
        return pd.DataFrame()
    rows = []
    for (model, task, b), g in df[df.method == "alternating"].groupby(["model", "task", "bits"]):
        higher = higher_is_better(g)
        man = _best_manual(g, higher)
        if not man.empty:
            r = man.iloc[0]
            n_sets = int(g[g.set.notna() & (g.search == "none")].set.nunique())
            rows.append({"model": model, "task": task, "bits": b,
                         "search": f"manual (best of {n_sets} sets by test score)", "objective": "test score",
                         "setting": f"set {int(r.set)}: E={r.E:g}, C={r.C:g}, P={r.P:g}", "trials": n_sets,
                         "train_loss": man.train_loss.mean(), "score": man.score.mean(), "seeds": man.seed.nunique()})
        for mode, label in (("manual", "manual (in-process, best by training objective)"),
                            ("model", "model-wise BO"), ("layer", "layer-wise BO")):
            for obj, s in searched(g, mode, None).groupby("objective"):
                p = s.iloc[-1].best_params or {}
                if mode == "layer":
                    es = [v for k, v in p.items() if k.endswith(".E")]
                    setting = (f"{len(es)} layers; E {min(es):.2f}..{max(es):.2f}" if es else "")
                elif mode == "model":
                    setting = (f"E={p.get('E', float('nan')):.3f}, C={p.get('C', float('nan')):.4f}, "
                               f"P={p.get('P', float('nan')):.3f}")
                else:
                    setting = f"set {p.get('set')}"
                rows.append({"model": model, "task": task, "bits": b, "search": label, "objective": obj,
                             "setting": setting, "trials": s.trials.max(), "train_loss": s.train_loss.mean(),
                             "score": s.score.mean(), "seeds": s.seed.nunique()})
    return pd.DataFrame(rows)


def table14(df: pd.DataFrame) -> pd.DataFrame:
    """Table 14: quantization scheme x the metric BO optimises (loss or the task metric); the largest trial budget of
    each search."""
    if df.empty:
        return pd.DataFrame()
    s = pd.concat([searched(df, mode, None, None) for mode in ("model", "layer")])
    if s.empty:
        return pd.DataFrame()
    keys = ["model", "task", "bits", "method", "search", "objective"]
    return (s.groupby(keys).agg(trials=("trials", "max"), score=("score", "mean"), train_loss=("train_loss", "mean"),
                                seeds=("seed", "nunique")).reset_index())


def trace_figures(df: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    """Objective (best so far, and each trial) against the trial number, manual / model-wise / layer-wise search, one
    figure per (model, task, bits, objective)."""
    s = df[df.search.isin(["manual", "model", "layer"])] if not df.empty else df
    if s.empty:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = {}
    for (model, task, b, obj), g in s.groupby(["model", "task", "bits", "objective"]):
        fig, ax = plt.subplots(figsize=(6.4, 4))
        for _, r in g.sort_values("finished").groupby("search").tail(1).iterrows():
            trace = sorted(r.trace, key=lambda t: t["trial"])
            xs = list(range(1, len(trace) + 1))
            ys = [t["objective"] for t in trace]
            best = (pd.Series(ys).cummax() if r.direction == "maximize" else pd.Series(ys).cummin()).tolist()
            line, = ax.plot(xs, best, lw=1.8, label=f"{r.search} (best so far)")
            ax.scatter(xs, ys, s=10, color=line.get_color(), alpha=0.5)
        ax.set_xlabel("trial")
        ax.set_ylabel(f"training {obj}")
        ax.legend(fontsize=8)
        ax.set_title(f"Kwon et al. 2021 search traces: {model} / {task}, {b}-bit Alternating", fontsize=9)
        path = out_dir / f"kwon2021_search_trace_{model}_{task}_{b}bit_{obj}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written[path.stem] = path
    return written


def _md(title: str, t: pd.DataFrame, notes: str = "") -> str:
    body = t.drop(columns=[c for c in ("trace",) if c in t.columns]).to_markdown(index=False, floatfmt=".4g") \
        if len(t) else "(no runs yet)"
    return f"## {title}\n\n{body}\n\n{NOTE} {notes}\n\n"


def build(records: list[dict], out_dir: Path, manual_sets: dict | None = None) -> dict[str, Path]:
    df = frame(records)
    if manual_sets is None:
        from ..config.compose import compose
        from omegaconf import OmegaConf

        manual_sets = OmegaConf.to_container(compose(["+recipe=pwq_manual"]).recipe.bcq.manual_sets, resolve=True)
    tables = [
        ("kwon2021_table1", "Table 1: 3-bit post-training quantization, MSE, average alpha, training loss and metric",
         table1(df, 3), "E = 1 for the weighted rows, C and P not used (C = 1, P = 0)."),
        ("kwon2021_table15", "Table 15: the same comparison at every bit width", table1(df, None), ""),
        ("kwon2021_table2", "Table 2: test score of 3-bit Alternating for each (E, C, P)", table_ecp(df, 3), ""),
        ("kwon2021_table6", "Table 6: test score of 4-bit Alternating for each (E, C, P)", table_ecp(df, 4), ""),
        ("kwon2021_table16", "Table 16: test score for each (E, C, P) at every bit width", table_ecp(df, None), ""),
        ("kwon2021_table3", "Table 3: quantizers and searches across models", table3(df), NOT_HERE + "."),
        ("kwon2021_table4", "Table 4: data and maximum iterations of each Bayesian search", table4(df),
         "samples: training rows (GLUE) or windows of the calibration text (perplexity) the objective sees."),
        ("kwon2021_table5", "Table 5: the 16 manual sets", table5(manual_sets),
         "The captions file is OCR-garbled; sets 1, 4, 5 and 13 are read as in "
         "../shared/research/pwq-bcq-and-quantized-pretraining.md 1.9."),
        ("kwon2021_table7", "Table 7: 3-bit Alternating, weights sharing the alphas", table7(df), ""),
        ("kwon2021_tables8_9_11_13_17", "Tables 8, 9, 11, 13, 17: manual search vs model-wise vs layer-wise BO",
         table_search(df), NOT_HERE + "; Table 17's optimal settings are the 'setting' column."),
        ("kwon2021_table14", "Table 14: quantization scheme and the metric BO optimises", table14(df), ""),
    ]
    written, md = {}, ["# Kwon et al. 2021 at CPU scale\n\n"]
    for name, title, t, notes in tables:
        written[name] = out_dir / f"{name}.csv"
        t.drop(columns=[c for c in ("trace",) if c in t.columns]).to_csv(written[name], index=False,
                                                                            float_format="%.6g")
        md.append(_md(title, t, notes))
    written["kwon2021_tables.md"] = out_dir / "kwon2021_tables.md"
    written["kwon2021_tables.md"].write_text("".join(md))
    written.update(trace_figures(df, out_dir))
    return written
