"""The README's Kwon et al. 2021 summaries for one model and task: a row per method (and manual set or search) and bit
width, from the run records as `make tables` reads them (qexp.report.kwon2021.frame), with the held-out perplexities
a pre-training task also records.

    python scripts/kwon2021_summary.py MODEL TASK [RUNS_DIR]       # markdown on stdout
    python scripts/kwon2021_summary.py gpt2_cpu qpt_clm
"""
from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

from qexp.experiment.records import load_records
from qexp.report import kwon2021


def _num(x, fmt: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return "inf" if math.isinf(x) else format(x, fmt)


def _val(x, default=0):
    return default if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _label(r) -> str:
    if r.search in ("model", "layer"):
        return f"{r.search}-wise BO ({int(r.trials)} trials, {r.objective})"
    if r.recipe == "pwq_manual":
        return f"manual set {r.set} (E {r.E:g}, C {r.C:g}, P {r.P:g})"
    label = f"`{r.recipe}`"
    if r.method == "greedy" and _val(r.E):
        label += f" E = {r.E:g}"
    if _val(r.group_size):
        label += f", groups of {int(r.group_size)}"
    return label


def rows(model: str, task: str, runs_dir: Path) -> list[str]:
    records = [r for r in load_records(runs_dir) if r.get("model") == model and r.get("task") == task]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = kwon2021.frame(records)
    held = {r["run_id"]: r.get("metrics") or {} for r in records}
    df = df.assign(run_id=[r["run_id"] for r in records if kwon2021.is_kwon(r)])
    names = sorted({k for m in held.values() for k, v in m.items()
                    if k not in ("valid", "test") and isinstance(v, dict) and "perplexity" in v})  # not the score
    head = ["bits", "method", "test score", *(f"{n} ppl" for n in names), "train loss", "weight MSE"]
    out = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    df = df.assign(order=[(b, 0 if s == "none" and rc != "pwq_manual" else 1 if rc == "pwq_manual" else 2,
                           str(rc), _val(e), int(st) if st is not None and str(st).isdigit() else 0, _val(g))
                          for b, s, rc, e, st, g in zip(df.bits, df.search, df.recipe, df.E, df.set,
                                                         df.group_size)])
    limits = {str((r["config"]["task"] or {}).get("heldout_limit")) for r in records if kwon2021.is_kwon(r)}
    for r in sorted(records, key=lambda r: r.get("finished", "")):   # the FP row evaluated like the quantized ones
        if r.get("recipe") == "fp32" and str((r["config"]["task"] or {}).get("heldout_limit")) in limits:
            m = r.get("metrics") or {}
            cells = " | ".join(_num((m.get(n) or {}).get("perplexity"), ".2f") for n in names)
            out.append(f"| 32 | FP32 | {_num(r.get('score'), '.2f')} | {cells}{' | ' if names else ''} | |")
            break
    for _, r in df.sort_values("order").iterrows():
        m = held[r.run_id]
        cells = " | ".join(_num((m.get(n) or {}).get("perplexity"), ".2f") for n in names)
        out.append(f"| {r.bits} | {_label(r)} | {_num(r.score, '.2f')} | {cells}{' | ' if names else ''}"
                   f"{_num(r.train_loss, '.4f')} | {_num(r.mse, '.3g')} |")
    return out


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    print("\n".join(rows(sys.argv[1], sys.argv[2], Path(sys.argv[3] if len(sys.argv) > 3 else "results/runs"))))
