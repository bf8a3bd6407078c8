"""Post-training calibration: weights from themselves, activations from data (STYLE 4).

``calibrate(model, batches)`` runs in three steps:
1. weight ranges: each weight quantizer observes its weight once and solves;
2. (only when a PEG quantizer permutes) a pass that measures per-dimension ranges and fixes the permutation;
   (optional hook, e.g. AdaRound, with weights quantized and activations in FP)
3. activation ranges: the estimators observe the calibration batches in an FP forward, then solve.
Activation statistics are taken on the full-precision forward (every quantizer passes its input through while
estimating); see README "Deviations" for how this differs from the authors' code.
"""
from __future__ import annotations

from contextlib import contextmanager
from itertools import islice
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .estimators import CalibrationError
from .sites import quantizers


@contextmanager
def estimating(model: nn.Module):
    """Activation quantizers observe (and pass through) inside the block; their ranges are fixed on exit."""
    acts = list(quantizers(model, "activation"))
    for q in acts:
        q.set_state("estimating")
    ok = False
    try:
        yield
        ok = True
    finally:
        for q in acts:
            if ok:
                q.compute_encodings()
                q.set_state("fixed")
            else:
                q.estimator.reset()
                q.set_state("off")


def calibrate_weights(model: nn.Module) -> None:
    owners = [m for m in model.modules() if hasattr(m, "weight_quantizer") and hasattr(m, "inner")]
    for m in owners:
        q = m.weight_quantizer
        if q.spec.enabled and not q.spec.granularity.dynamic:
            q.estimator.observe(q.slots(m.inner.weight.detach()))
            q.compute_encodings()
        q.set_state("fixed" if q.spec.enabled else "off")


@torch.no_grad()
def calibrate(model: nn.Module, batches: Callable[[], Iterable[dict]], num_batches: int, progress: bool = True,
              after_weights: Callable[[nn.Module], None] | None = None) -> None:
    """``batches()`` returns a fresh iterable of model inputs (dicts) each time it is called; every data pass takes
    exactly its first ``num_batches`` batches (fewer is an error).  ``after_weights`` runs once the weight ranges are
    fixed and before any activation is calibrated (AdaRound's and LKD's place)."""
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 0:
        raise CalibrationError(f"calibration num_batches={num_batches!r} must be a positive integer")
    was_training = model.training
    model.eval()
    calibrate_weights(model)
    for q in quantizers(model, "activation"):
        q.set_state("off")
    if after_weights is not None:
        with torch.enable_grad():
            after_weights(model)
    acts = list(quantizers(model, "activation"))

    def run(desc: str) -> None:
        if num_batches < 1:
            raise CalibrationError(f"{desc} needs data but num_batches={num_batches}; valid: a positive integer")
        seen = 0
        for batch in tqdm(islice(batches(), num_batches), total=num_batches, desc=desc, disable=not progress,
                          leave=False):
            model(**batch)
            seen += 1
        if seen < num_batches:
            raise CalibrationError(f"calibration asked for num_batches={num_batches} but the data gave only {seen} "
                                   f"batches; lower calibration.num_batches or calibration.batch_size")

    if any(q.needs_permutation for q in acts):
        for q in acts:
            q.set_state("measuring" if q.needs_permutation else "off")
        run("calibration: PEG permutation")
        for q in acts:
            if q.needs_permutation:
                q.finish_measuring()
    if any(q.spec.enabled and not q.spec.granularity.dynamic for q in acts):
        with estimating(model):
            run("calibration")
    else:  # nothing static to estimate: dynamic (per-token) sites compute their ranges in every forward
        for q in acts:
            q.set_state("fixed" if q.spec.enabled else "off")
    model.train(was_training)
