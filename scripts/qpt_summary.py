"""The README's quantized pre-training summary (Chitsaz et al. 2024 at CPU scale): one row per recipe, from the
records in a runs folder, the newest record of each (setting, recipe, seed) as `make tables` counts them.

    python scripts/qpt_summary.py [RUNS_DIR]       # markdown on stdout
"""
from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

from qexp.experiment.records import load_records
from qexp.report import chitsaz2024

DOWNSTREAM = ("mrpc", "qnli", "rte", "sst2", "wnli")   # the GLUE tasks with dev files here (chitsaz2024.DOWNSTREAM_NAMES)


def _num(x, fmt: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return "inf" if math.isinf(x) else format(x, fmt)


def rows(runs_dir: Path) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = chitsaz2024.frame(load_records(runs_dir))
    base = df[df.recipe == "fp32"].wikitext2.mean()
    # the baseline first, then the training variants, then the post-training rows, each in the order they finished
    df = df.assign(k=[(0 if r == "fp32" else 2 if r.startswith("qpt_ptq_") else 1, f)
                      for r, f in zip(df.recipe, df.finished)])
    out = ["| recipe | final val loss | WikiText-2 ppl | PTB ppl | × baseline (WT-2) | status | downstream "
           "MRPC / QNLI / RTE / SST-2 / WNLI |", "|---|---|---|---|---|---|---|"]
    for _, r in df.sort_values("k").iterrows():
        ds = r.downstream or {}
        down = " / ".join(_num(ds.get(t), ".1f") for t in DOWNSTREAM) if ds else ""
        ratio = r.wikitext2 / base if r.wikitext2 is not None and not math.isnan(r.wikitext2) else None
        out.append(f"| `{r.recipe}` | {_num(r.val_loss, '.4f')} | {_num(r.wikitext2, '.2f')} | {_num(r.ptb, '.2f')} "
                   f"| {_num(ratio, '.3f')} | {r.status} | {down} |")
    return out


if __name__ == "__main__":
    print("\n".join(rows(Path(sys.argv[1] if len(sys.argv) > 1 else "results/runs"))))
