"""Kwon et al. 2021 summary for one model and task on stdout (the same table `qexp tables` writes as
results/tables/kwon2021_summary_<model>_<task>.md).

    python scripts/kwon2021_summary.py MODEL TASK [RUNS_DIR] [--all]
"""
from __future__ import annotations

import sys
from pathlib import Path

from qexp.experiment.records import load_records
from qexp.report.kwon2021_summary import rows

if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--all"]
    if len(args) < 2:
        sys.exit(__doc__)
    print("\n".join(rows(args[0], args[1], load_records(Path(args[2] if len(args) > 2 else "results/runs")),
                         every_set="--all" in sys.argv)))
