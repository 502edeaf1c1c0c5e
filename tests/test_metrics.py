import numpy as np
import pytest
from sklearn import metrics as skm

from fgmask_jax.evaluation import metrics


def test_summary_agrees_with_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 500)
    pred = np.where(rng.random(500) < 0.6, y, rng.integers(0, 4, 500))
    s = metrics.summarize(y, pred, 4)
    assert s["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert s["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert s["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert np.array_equal(s["confusion"], skm.confusion_matrix(y, pred, labels=range(4)))
    assert s["majority_rate"] == pytest.approx(np.bincount(y).max() / 500)


def test_constant_predictor_sits_on_the_floor():
    y = np.array([0, 0, 0, 1, 2])
    s = metrics.summarize(y, np.zeros(5, int), 3)
    assert s["accuracy"] == s["majority_rate"] == 0.6
    assert s["balanced_accuracy"] == pytest.approx(1 / 3)
