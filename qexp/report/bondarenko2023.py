"""Bondarenko et al. 2023 ("Quantizable Transformers") tables and figures from the pre-training run records.

A *setting* is one trained configuration: the model config (architecture, attention variant) and the task config
(corpus, tokenizer, training budget), everything but the seeds and the recipe.  Per setting:

- FP, max inf-norm, avg kurtosis: the FP32 runs (``recipe=fp32``), mean +- std over training seeds;
- W8A8 (and Table 10's bit widths): the ``bq23_*`` runs, mean +- std over training seeds x calibration seeds;

std is the sample standard deviation (ddof 1; 0 runs -> empty, 1 run -> std empty).  Perplexities of different
tokenizers never share a cell: the tokenizer is part of the setting and printed in every row.  Our CPU models are far
smaller than the paper's (see the ``scale`` column): the ``_vs_paper`` files put the numbers side by side, they do not
claim the same scale.  Rows the paper has and we cannot run here stay in the layout with the paper's numbers and an
empty "ours" with the reason (ViT: no ImageNet here; Table 3: OPT-350m/1.3B need a GPU).

Figures (PNG): max inf-norm and average kurtosis against the training step per setting (from the records' curves),
and the per-layer inf-norm / kurtosis of the final FP models.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

REFERENCE = Path(__file__).parent / "reference"
KINDS = ("pretrain_mlm", "pretrain_clm")
FP_RECIPE = "fp32"
W8A8 = "bq23_w8a8"
TABLE10 = (("W8A8 min-max", "bq23_w8a8"), ("W6A8 min-max", "bq23_w6a8"), ("W6A8 MSE", "bq23_w6a8_mse"),
           ("W4A8 MSE", "bq23_w4a8_mse"), ("W6A6 MSE", "bq23_w6a6_mse"))
PAPER_MODEL = {"bert": "BERT", "opt": "OPT"}
NOT_HERE = {"ViT": "no ImageNet (and no ViT code from the authors) on these machines"}


def method_of(att: dict) -> str:
    if att.get("gate", "none") != "none":
        return "gated attention"
    return "clipped softmax" if att.get("softmax") == "clipped" else "vanilla"


def _setting(cfg: dict) -> str:
    key = {"model": cfg.get("model"), "task": cfg.get("task")}
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]


def frame(records: list[dict]) -> pd.DataFrame:
    rows = []
    for r in records:
        cfg = r.get("config") or {}
        if (cfg.get("task") or {}).get("kind") not in KINDS or (cfg.get("task") or {}).get("paper") == "chitsaz2024":
            continue   # quantized pre-training runs have their own tables (qexp.report.chitsaz2024)
        m = (r.get("metrics") or {}).get("valid") or {}
        att_cfg = (cfg.get("model") or {}).get("attention") or {}
        tok = r.get("tokenizer") or {}
        tr = (cfg.get("task") or {}).get("train") or {}
        a = cfg["model"].get("architecture") or {}
        rows.append({
            "model": r["model"], "arch": cfg["model"].get("arch"), "method": method_of(r.get("attention") or {}),
            "attention": att_cfg.get("name", "?"), "attention_cfg": json.dumps(att_cfg, sort_keys=True),
            "gamma": (r.get("attention") or {}).get("gamma", 0.0), "zeta": (r.get("attention") or {}).get("zeta", 1.0),
            "tokenizer": f"{tok.get('name')}/{tok.get('vocab_size')}", "setting": _setting(cfg),
            "scale": (f"{a.get('num_hidden_layers')}L/{a.get('hidden_size')}, {tr.get('max_steps')} steps x "
                      f"{tr.get('batch_size', 0) * tr.get('grad_accum', 1)} x {cfg['task'].get('seq_length')} tok"),
            "recipe": r["recipe"], "seed": r["seed"],
            "calibration_seed": m.get("calibration_seed"), "perplexity": m.get("perplexity"),
            "max_inf_norm": m.get("max_inf_norm"), "avg_kurtosis": m.get("avg_kurtosis"),
            "curves": (r.get("pretrain") or {}).get("curves") or [], "per_tensor": m.get("per_tensor") or {},
            "maps": m.get("attention_maps"), "delimiter_attention": m.get("delimiter_attention"),
            "path": r.get("_path")})
    return pd.DataFrame(rows)


def _stat(values) -> tuple[float | None, float | None, int]:
    s = pd.Series([v for v in values if v is not None], dtype=float)
    if s.empty:
        return None, None, 0
    return float(s.mean()), (float(s.std()) if len(s) > 1 else None), len(s)


def settings(df: pd.DataFrame, recipes=(W8A8,), same_runs: bool = False) -> pd.DataFrame:
    """One row per setting: FP / max inf-norm / avg kurtosis over training seeds, each recipe over all its runs.
    ``same_runs``: each recipe only over the (training seed, calibration seed) pairs that every recipe of ``recipes``
    has in that setting, so rows compare like with like (issue 29: Table 10 averaged W8A8 over 2 x 3 runs and W6A8
    over training seed 0 only, so W6A8 looked better than W8A8)."""
    out = []
    for key, g in df.groupby("setting", sort=False):
        if same_runs:
            pairs = [set(zip(q.seed, q.calibration_seed)) for q in (g[g.recipe == r] for r in recipes)]
            common = set.intersection(*pairs) if pairs else set()
            keep = g.recipe.isin(recipes)
            g = g[~keep | pd.Series(list(zip(g.seed, g.calibration_seed)), index=g.index).isin(common)]
        first = g.iloc[0]
        fp = g[g.recipe == FP_RECIPE]
        row = {k: first[k] for k in ("model", "arch", "method", "attention", "attention_cfg", "gamma", "zeta",
                                     "tokenizer", "scale")}
        row["setting"] = key
        for col, src in (("FP", "perplexity"), ("max_inf_norm", "max_inf_norm"), ("avg_kurtosis", "avg_kurtosis")):
            row[col], row[f"{col}_std"], n = _stat(fp[src])
        row["train_seeds"] = int(fp.seed.nunique())
        for recipe in recipes:
            q = g[g.recipe == recipe]
            row[recipe], row[f"{recipe}_std"], row[f"{recipe}_runs"] = _stat(q.perplexity)
            row[f"{recipe}_train_seeds"] = int(q.seed.nunique())
        out.append(row)
    return pd.DataFrame(out)


def _is_paper_row(arch: str, att: dict) -> bool:
    """The attention settings of Table 2's rows (the README's hyper-parameters behind each row)."""
    gate, soft = att.get("gate", "none"), att.get("softmax", "vanilla")
    if gate == "none" and soft == "vanilla":
        return True
    if arch == "bert":
        return (soft == "clipped" and att.get("gamma") == -0.025 and float(att.get("zeta", 1)) == 1.0) or \
            (gate == "mlp" and soft == "vanilla")
    return (soft == "clipped" and att.get("alpha") == 12) or \
        (gate == "linear" and soft == "vanilla" and float(att.get("pi_init", 0.5)) == 0.25)


def _fmt(mean, std, digits=2) -> str:
    if mean is None or pd.isna(mean):
        return "–"
    return f"{mean:.{digits}f}" + ("" if std is None or pd.isna(std) else f"±{std:.{digits}f}")


def table2(st: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    paper = pd.read_csv(REFERENCE / "bondarenko2023_table2.csv", keep_default_na=False)
    rows, long = [], []
    ours = st[[_is_paper_row(a, json.loads(c)) for a, c in zip(st.arch, st.attention_cfg)]] if len(st) else st
    for _, p in paper.iterrows():
        mine = ours[(ours.arch.map(PAPER_MODEL) == p.model) & (ours.method == p.method)] if len(ours) else ours
        if mine.empty:
            rows.append({"paper_model": p.model, "method": p.method, "model": None, "tokenizer": None,
                         "scale": None, "note": NOT_HERE.get(p.model, "no runs yet")})
        for _, m in mine.iterrows():
            rows.append({"paper_model": p.model, "method": p.method, "model": m.model, "tokenizer": m.tokenizer,
                         "scale": m.scale, "note": "",
                         **{c: m[c] for c in ("FP", "FP_std", "max_inf_norm", "max_inf_norm_std", "avg_kurtosis",
                                              "avg_kurtosis_std")},
                         "W8A8": m[W8A8], "W8A8_std": m[f"{W8A8}_std"], "train_seeds": m.train_seeds,
                         "W8A8_runs": m[f"{W8A8}_runs"]})
        for col in ("FP", "max_inf_norm", "avg_kurtosis", "W8A8"):
            if mine.empty:
                long.append({"paper_model": p.model, "method": p.method, "column": col, "model": None, "ours": None,
                             "ours_std": None, "paper": p[col], "paper_std": p[f"{col}_std"],
                             "note": NOT_HERE.get(p.model, "no runs yet")})
            for _, m in mine.iterrows():
                src = W8A8 if col == "W8A8" else col
                long.append({"paper_model": p.model, "method": p.method, "column": col, "model": m.model,
                             "ours": m[src], "ours_std": m[f"{src}_std"], "paper": p[col],
                             "paper_std": p[f"{col}_std"], "note": f"ours at {m.scale}, tokenizer {m.tokenizer}"})
    return pd.DataFrame(rows), pd.DataFrame(long)


def table2_markdown(wide: pd.DataFrame) -> str:
    paper = pd.read_csv(REFERENCE / "bondarenko2023_table2.csv", keep_default_na=False).set_index(["model", "method"])
    lines = ["Bondarenko et al. 2023, Table 2: ours (paper) -- FP perplexity, max inf-norm, average kurtosis, W8A8 "
             "perplexity; mean±std over training seeds (W8A8: training x calibration seeds).  Our models are CPU-"
             "sized (scale column); the paper's are BERT-base / OPT-125m / ViT-S/16.", "",
             "| model | method | ours: model, tokenizer, scale | FP | max ‖x‖∞ | avg kurtosis | W8A8 | seeds |",
             "|---|---|---|---|---|---|---|---|"]
    for _, w in wide.iterrows():
        p = paper.loc[(w.paper_model, w.method)]
        cells = []
        for col in ("FP", "max_inf_norm", "avg_kurtosis", "W8A8"):
            digits = 2 if col in ("FP", "W8A8") else 1
            cells.append(f"{_fmt(w.get(col), w.get(f'{col}_std'), digits)} ({_fmt(p[col], p[f'{col}_std'], digits)})")
        ran = isinstance(w.model, str)
        who = f"{w.model}, {w.tokenizer}, {w.scale}" if ran else f"– ({w.note})"
        seeds = f"{int(w.train_seeds)} train, {int(w.W8A8_runs)} W8A8" if ran else ""
        lines.append(f"| {w.paper_model} | {w.method} | {who} | " + " | ".join(cells) + f" | {seeds} |")
    return "\n".join(lines) + "\n"


def table1(st: pd.DataFrame) -> pd.DataFrame:
    """BERT rows by (gamma, zeta): vanilla and clipped-softmax settings without a gate."""
    paper = pd.read_csv(REFERENCE / "bondarenko2023_table1.csv")
    sub = st[(st.arch == "bert") & (st.method != "gated attention")] if len(st) else st
    rows = []
    for _, p in paper.iterrows():
        mine = sub[(sub.gamma.astype(float).round(6) == round(p.gamma, 6)) &
                   (sub.zeta.astype(float).round(6) == round(p.zeta, 6))] if len(sub) else sub
        base = {"gamma": p.gamma, "zeta": p.zeta, **{f"paper_{c}": p[c] for c in ("FP", "max_inf_norm",
                                                                                 "avg_kurtosis", "W8A8")}}
        if mine.empty:
            rows.append({**base, "model": None, "note": "no runs yet"})
        for _, m in mine.iterrows():
            rows.append({**base, "model": m.model, "tokenizer": m.tokenizer, "scale": m.scale,
                         "FP": m.FP, "max_inf_norm": m.max_inf_norm, "avg_kurtosis": m.avg_kurtosis,
                         "W8A8": m[W8A8], "W8A8_std": m[f"{W8A8}_std"], "train_seeds": m.train_seeds})
    return pd.DataFrame(rows)


def table10(st: pd.DataFrame) -> pd.DataFrame:
    paper = pd.read_csv(REFERENCE / "bondarenko2023_table10.csv").set_index("bits")
    sub = st[st.arch == "bert"] if len(st) else st
    rows = []
    for label, recipe in TABLE10:
        row = {"bits": label, "recipe": recipe}
        for method in ("vanilla", "clipped softmax", "gated attention"):
            mine = sub[sub.method == method] if len(sub) else sub
            vals = [(m.model, m.get(recipe), m.get(f"{recipe}_std"), m.get(f"{recipe}_runs"))
                    for _, m in mine.iterrows()]
            row[method] = "; ".join(f"{_fmt(v, s)} [{n}, {int(k)} runs]" for n, v, s, k in vals
                                    if v is not None and pd.notna(v)) or None
            row[f"paper {method}"] = paper.loc[label, method]
        rows.append(row)
    return pd.DataFrame(rows)


def table3(st: pd.DataFrame) -> pd.DataFrame:
    paper = pd.read_csv(REFERENCE / "bondarenko2023_table3.csv")
    names = {"OPT-350m": "opt_350m_scratch", "OPT-1.3B": "opt_1b3_scratch"}
    rows = []
    for _, p in paper.iterrows():
        mine = st[(st.model == names[p.model]) & (st.method == p.method)] if len(st) else st
        base = {"model": p.model, "method": p.method, **{f"paper_{c}": p[c] for c in ("FP", "max_inf_norm",
                                                                                     "avg_kurtosis", "W8A8")}}
        if mine.empty:
            rows.append({**base, "note": "a GPU run (task=pretrain_clm_paper model=" + names[p.model] + ")"})
        for _, m in mine.iterrows():
            rows.append({**base, "FP": m.FP, "max_inf_norm": m.max_inf_norm, "avg_kurtosis": m.avg_kurtosis,
                         "W8A8": m[W8A8], "note": m.tokenizer})
    return pd.DataFrame(rows)


def figures(df: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    """Outlier metrics against the training step, and per-layer values of the final FP models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = {}
    fp = df[df.recipe == FP_RECIPE] if len(df) else df
    for arch, g in (fp.groupby("arch") if len(fp) else []):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for _, r in g.iterrows():
            c = pd.DataFrame(r.curves)
            if c.empty:
                continue
            label = f"{r.attention} s{r.seed}"
            for ax, col in zip(axes, ("max_inf_norm", "avg_kurtosis", "perplexity")):
                ax.plot(c.step, c[col], marker=".", label=label)
        for ax, col in zip(axes, ("max inf-norm (residual)", "avg kurtosis", "validation perplexity")):
            ax.set_xlabel("training step")
            ax.set_title(col)
            ax.set_yscale("log")
        axes[0].legend(fontsize=7)
        fig.suptitle(f"Bondarenko et al. 2023 at CPU scale: outliers during pre-training ({arch})")
        path = out_dir / f"bondarenko2023_curves_{arch}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written[path.stem] = path
        fig, axes = plt.subplots(1, 2, figsize=(13, 4))
        for _, r in g.drop_duplicates("attention").iterrows():
            t = pd.DataFrame(r.per_tensor).T
            if t.empty:
                continue
            res = t[t.role == "residual"]
            axes[0].plot(range(len(res)), res["inf_norm"].astype(float), marker="o", label=f"{r.attention} s{r.seed}")
            axes[1].plot(range(len(t)), t["kurtosis"].astype(float), marker=".", label=f"{r.attention} s{r.seed}")
            axes[1].set_xticks(range(len(t)), [n.replace("encoder.layer.", "L").replace("decoder.layers.", "L")
                                                for n in t.index], rotation=90, fontsize=6)
        axes[0].set_title("inf-norm of the residual stream per layer")
        axes[0].set_xlabel("layer")
        axes[1].set_title("kurtosis per tensor")
        axes[1].set_yscale("log")
        axes[0].legend(fontsize=7)
        path = out_dir / f"bondarenko2023_layers_{arch}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written[path.stem] = path
        path = _attention_maps(g.drop_duplicates("attention"), arch, out_dir, plt)
        if path:
            written[path.stem] = path
    return written


def _attention_maps(g: pd.DataFrame, arch: str, out_dir: Path, plt) -> Path | None:
    """The last layer's attention probabilities per head and variant (the first ``MAP_TOKENS`` queries and keys of the
    first evaluation sequence; colour scale up to each panel's maximum), titled with each head's mean probability
    mass on delimiter keys over the whole evaluation set: "no-op" heads put most of it on [SEP] / "." / </s>."""
    g = g[g.maps.notna()]
    if g.empty:
        return None
    heads = len(g.iloc[0].maps["probs"][-1])
    fig, axes = plt.subplots(len(g), heads, figsize=(3.6 * heads, 3.6 * len(g)), squeeze=False)
    for row, (_, r) in enumerate(g.iterrows()):
        tokens = r.maps.get("tokens") or [str(i) for i in r.maps["token_ids"]]
        for h in range(heads):
            ax = axes[row][h]
            probs = r.maps["probs"][-1][h]
            im = ax.imshow(probs, vmin=0, vmax=max(max(row) for row in probs) or 1, cmap="viridis")
            plt.colorbar(im, ax=ax, fraction=0.046)
            mass = r.delimiter_attention[-1][h] if r.delimiter_attention else float("nan")
            ax.set_title(f"{r.attention} s{r.seed}, head {h}: {mass:.2f} on delimiters", fontsize=8)
            ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=5)
            ax.set_yticks(range(len(tokens)), tokens, fontsize=5)
    fig.suptitle(f"last-layer attention probabilities ({arch}); keys on x, queries on y")
    path = out_dir / f"bondarenko2023_attention_{arch}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build(records: list[dict], out_dir: Path) -> dict[str, Path]:
    df = frame(records)
    st = settings(df, recipes=tuple(r for _, r in TABLE10)) if len(df) else pd.DataFrame(
        columns=["model", "arch", "method", "attention_cfg", "gamma", "zeta", "setting"])
    st10 = settings(df, recipes=tuple(r for _, r in TABLE10), same_runs=True) if len(df) else st
    written = {}
    wide, long = table2(st)
    for name, frame_ in (("bondarenko2023_table2", wide), ("bondarenko2023_table2_vs_paper", long),
                         ("bondarenko2023_table1", table1(st)), ("bondarenko2023_table10", table10(st10)),
                         ("bondarenko2023_table3", table3(st)),
                         ("bondarenko2023_sweep", st.drop(columns=["attention_cfg"], errors="ignore"))):
        written[name] = out_dir / f"{name}.csv"
        frame_.to_csv(written[name], index=False, float_format="%.4g")
    written["bondarenko2023_table2.md"] = out_dir / "bondarenko2023_table2.md"
    written["bondarenko2023_table2.md"].write_text(table2_markdown(wide))
    written.update(figures(df, out_dir))
    return written
