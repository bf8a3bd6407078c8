"""GLUE metrics against hand computation (and the definitions in the GLUE paper)."""
import math

import numpy as np
import pytest

from qexp.tasks.metrics import compute, task_score

PREDS = np.array([1, 0, 1, 1, 0, 1])
LABELS = np.array([1, 0, 0, 1, 1, 1])


def test_accuracy_f1_matthews_by_hand():
    # TP=3 (idx 0,3,5), TN=1 (idx 1), FP=1 (idx 2), FN=1 (idx 4)
    m = compute(["accuracy", "f1", "matthews_correlation"], np.eye(2)[PREDS], LABELS, regression=False)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert m["matthews_correlation"] == pytest.approx((3 * 1 - 1 * 1) / math.sqrt(4 * 4 * 2 * 2))


def test_pearson_spearman_by_hand():
    pred = np.array([[0.1], [0.4], [0.35], [0.8]])
    gold = np.array([0.0, 0.5, 0.3, 1.0])
    m = compute(["pearson", "spearmanr"], pred, gold, regression=True)
    p, g = pred.ravel(), gold
    r = ((p - p.mean()) * (g - g.mean())).sum() / math.sqrt(((p - p.mean()) ** 2).sum() * ((g - g.mean()) ** 2).sum())
    assert m["pearson"] == pytest.approx(r)
    assert m["spearmanr"] == pytest.approx(1.0)  # same ranks


def test_task_score_averages_metrics_then_splits():
    s = task_score({"matched": {"accuracy": 0.8}, "mismatched": {"accuracy": 0.7}}, ["accuracy"])
    assert s == pytest.approx(75.0)
    assert task_score({"validation": {"accuracy": 0.8, "f1": 0.9}}, ["accuracy", "f1"]) == pytest.approx(85.0)
