"""GLUE metrics, defined as the GLUE benchmark (and HF ``evaluate``'s ``glue`` metric) defines them.

``evaluate.load("glue", ...)`` fetches its metric script from the Hugging Face hub at run time, so every run would
need the network; the metric itself is these scikit-learn / SciPy calls, which we call directly (the tests check
them against hand-computed values).

Scores in tables (Bondarenko et al. 2021 follow the authors' code, ../shared/research A4):
CoLA Matthews corr.; SST-2, QNLI, RTE accuracy; MRPC and QQP mean(accuracy, F1); STS-B mean(Pearson, Spearman);
MNLI mean(matched acc., mismatched acc.).  All x100.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from ..common.registry import Registry

METRICS: Registry = Registry("metric")


@METRICS.register("accuracy")
def accuracy(preds, labels) -> float:
    return float(accuracy_score(labels, preds))


@METRICS.register("f1")
def f1(preds, labels) -> float:
    return float(f1_score(labels, preds))


@METRICS.register("matthews_correlation")
def matthews(preds, labels) -> float:
    return float(matthews_corrcoef(labels, preds))


@METRICS.register("pearson")
def pearson(preds, labels) -> float:
    return float(pearsonr(preds, labels)[0])


@METRICS.register("spearmanr")
def spearman(preds, labels) -> float:
    return float(spearmanr(preds, labels)[0])


def compute(names, logits: np.ndarray, labels: np.ndarray, regression: bool) -> dict[str, float]:
    preds = logits.reshape(-1) if regression else logits.argmax(-1)
    return {n: METRICS.get(n)(preds, labels) for n in names}


def task_score(metrics_by_split: dict[str, dict[str, float]], score_metrics) -> float:
    """Mean over eval splits of the mean of ``score_metrics``, x100."""
    per_split = [np.mean([m[s] for s in score_metrics]) for m in metrics_by_split.values()]
    return float(100.0 * np.mean(per_split))
