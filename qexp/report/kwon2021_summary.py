"""Kwon et al. 2021 summaries for one model and task, written by `qexp tables` as
``results/tables/kwon2021_summary_<model>_<task>.md`` (issue 32: no script rewrites a Markdown file in place): a row
per method and bit width, from the run records as the Kwon tables read them (:func:`.kwon2021.frame`, so a longer
search supersedes a shorter one there too), with the held-out perplexities a pre-training task also records.  The 16
manual sets collapse into the best by test score and the lowest training loss (what a user without test labels would
pick), with the range.
"""
from __future__ import annotations

import math
import warnings

import pandas as pd

from . import kwon2021


def _num(x, fmt: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return "inf" if math.isinf(x) else format(x, fmt)


def _val(x, default=0):
    return default if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _label(r) -> str:
    if r.search in ("model", "layer"):
        extra = "" if r.method == "alternating" else f" of the {r.method} grid"
        return f"{r.search}-wise BO{extra} ({int(r.trials)} trials, {r.objective})"
    if r.recipe == "pwq_manual":
        return f"manual set {int(r.set)}" + _val(getattr(r, "why", ""), "")
    label = f"`{r.recipe}`"
    if r.method == "greedy" and _val(r.E):
        label += f" E = {r.E:g}"
    if _val(r.group_size):
        label += f", groups of {int(r.group_size)}"
    return label


def _setting(r) -> str:
    if r.search == "model" and r.best_params:
        return ", ".join(f"{k} {r.best_params[k]:.3g}" for k in ("E", "C", "P"))
    if r.search == "layer":
        return "one E, C, P per layer"
    if r.recipe == "pwq_manual" or _val(r.E) or _val(r.P) or _val(r.C, 1.0) != 1.0:
        return f"E {r.E:g}, C {r.C:g}, P {r.P:g}" + _val(getattr(r, "range", ""), "")
    return ""


def _chosen_manual(df: pd.DataFrame, higher: bool) -> pd.DataFrame:
    """Per bit width: the manual set with the best test score and the one with the lowest training loss."""
    keep = []
    for _, g in df[df.recipe == "pwq_manual"].groupby("bits"):
        span = f"; the 16 sets: {g.score.min():.2f}–{g.score.max():.2f}"
        g = g.sort_values("set", kind="stable")   # ties go to the lower set number, not to the file order
        best = g.loc[g.score.idxmax() if higher else g.score.idxmin()].copy()
        low = g.loc[g.train_loss.idxmin()].copy()
        if best.run_id == low.run_id:
            best["why"], best["range"] = " (best test score and lowest train loss)", span
            keep.append(best)
        else:
            best["why"], best["range"] = " (best test score)", span
            low["why"], low["range"] = " (lowest train loss)", ""
            keep += [best, low]
    return pd.DataFrame(keep)


def rows(model: str, task: str, all_records: list[dict], every_set: bool = False) -> list[str]:
    records = [r for r in all_records if r.get("model") == model and r.get("task") == task]
    kwon = [r for r in records if kwon2021.is_kwon(r)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = kwon2021.frame(kwon).assign(run_id=[r["run_id"] for r in kwon])
    if df.empty:
        return [f"no Kwon et al. 2021 records of {model} / {task}"]
    searches = [kwon2021.searched(df, mode, None, None) for mode in ("model", "layer")]   # any objective and scheme
    df = pd.concat([df[(df.search == "none") & (df.recipe != "pwq_manual")], *searches,
                    df[df.recipe == "pwq_manual"] if every_set else _chosen_manual(df, kwon2021.higher_is_better(df))])
    held = {r["run_id"]: r.get("metrics") or {} for r in records}
    names = sorted({k for m in held.values() for k, v in m.items()
                    if k not in ("valid", "test") and isinstance(v, dict) and "perplexity" in v})  # not the score
    head = ["bits", "method", "test score", *(f"{n} ppl" for n in names), "train loss", "train metric",
            "weight MSE", "E, C, P"]
    out = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]

    def line(bits, label, score, metrics, loss=None, metric=None, mse=None, setting=""):
        cells = [str(bits), label, _num(score, ".2f"), *(_num((metrics.get(n) or {}).get("perplexity"), ".2f")
                                                        for n in names),
                 _num(loss, ".4f"), _num(metric, ".2f"), _num(mse, ".3g"), setting]
        return "| " + " | ".join(cells) + " |"

    limits = {str((r["config"]["task"] or {}).get("heldout_limit")) for r in kwon}
    for r in sorted(records, key=lambda r: r.get("finished", ""), reverse=True):   # FP, evaluated like the others
        if (r.get("recipe") == "fp32" and str((r["config"]["task"] or {}).get("heldout_limit")) in limits
                and r.get("seed") in {k["seed"] for k in kwon}):   # the FP32 run of the Kwon runs' seed
            out.append(line(32, "FP32", r.get("score"), r.get("metrics") or {}))
            break
    df = df.assign(order=[(b, 0 if s == "none" and rc != "pwq_manual" else 2 if rc == "pwq_manual" else 1,
                           str(rc), _val(e), _val(st), _val(g), str(s), str(o))
                          for b, s, rc, e, st, g, o in zip(df.bits, df.search, df.recipe, df.E, df.set,
                                                            df.group_size, df.objective)])
    for _, r in df.sort_values("order").iterrows():
        out.append(line(r.bits, _label(r), r.score, held[r.run_id], r.train_loss, r.train_metric, r.mse, _setting(r)))
    return out


def build(records: list[dict], out_dir) -> dict:
    """One summary per (model, task) with Kwon et al. 2021 records."""
    from pathlib import Path

    pairs = sorted({(r["model"], r["task"]) for r in records if kwon2021.is_kwon(r)})
    written = {}
    for model, task in pairs:
        path = Path(out_dir) / f"kwon2021_summary_{model}_{task}.md"
        path.write_text(f"Kwon et al. 2021 on {model} / {task}: one row per method and bit width (manual sets: the "
                        f"best by test score and by training loss, with the range of the 16)\n\n"
                        + "\n".join(rows(model, task, records)) + "\n")
        written[path.stem] = path
    return written
