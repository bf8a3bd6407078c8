"""Where the HF Trainer reports training curves (issue 32 #4): ``report_to`` (default ``[tensorboard]``) into
``<tb_dir>/<name>``, beside the curves every record keeps.  ``name`` is the training's own identity: the cache folder of
a fine-tuned or pre-trained model (trained once, shared by the runs that reuse it) or the run id (QAT).  Operational
keys: they change no run id and no cache key.  Checked before anything loads (:func:`check`)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

# the Trainer integrations qexp offers, and the module each needs
BACKENDS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


class ReportError(ValueError):
    pass


def targets(report_to) -> list[str]:
    if report_to is None or isinstance(report_to, str):
        report_to = [] if report_to in (None, "none", "") else [report_to]
    return [str(r) for r in report_to if str(r) != "none"]


def check(report_to) -> None:
    """Each target is one qexp offers and is installed (``report_to=[]`` or ``none``: the record's curves only)."""
    for r in targets(report_to):
        if r not in BACKENDS:
            raise ReportError(f"report_to={r!r} is not a reporting target; valid: {', '.join(BACKENDS)}, none")
        if importlib.util.find_spec(BACKENDS[r]) is None:
            raise ReportError(f"report_to={r!r} needs the '{BACKENDS[r]}' package (pip install {BACKENDS[r]}), or "
                              f"report_to=none")


def trainer_args(report_to, tb_dir, name: str) -> dict:
    """The ``TrainingArguments`` entries of one training; only the main process writes (the Trainer's rule)."""
    to = targets(report_to)
    if not to:
        return {"report_to": []}
    return {"report_to": to, "logging_dir": str(Path(tb_dir) / name)}
