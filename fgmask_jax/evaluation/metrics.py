"""Classification metrics: pure functions of labels and predictions (numpy)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """int64[C, C]: row = true class, column = predicted class."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"labels {y_true.shape} and predictions {y_pred.shape} differ in shape")
    flat = y_true.astype(np.int64) * num_classes + y_pred
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def summarize(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    """Accuracy, balanced accuracy, macro-F1, the majority-class rate and the confusion matrix.

    Balanced accuracy averages recall over the classes present in ``y_true``;
    macro-F1 averages F1 over all classes that occur in labels or predictions
    (a class never seen nor predicted is left out, as scikit-learn does with
    ``labels`` unset). The majority-class rate is the accuracy of always
    answering the most frequent true class: the floor any accuracy is read against.
    """
    cm = confusion_matrix(y_true, y_pred, num_classes)
    n = cm.sum()
    support, predicted, correct = cm.sum(1), cm.sum(0), np.diag(cm)
    present = support > 0
    recall = np.divide(correct, support, out=np.zeros(num_classes), where=present)
    precision = np.divide(correct, predicted, out=np.zeros(num_classes), where=predicted > 0)
    f1 = np.divide(
        2 * precision * recall,
        precision + recall,
        out=np.zeros(num_classes),
        where=(precision + recall) > 0,
    )
    seen = present | (predicted > 0)
    return {
        "n": int(n),
        "accuracy": float(correct.sum() / n) if n else float("nan"),
        "balanced_accuracy": float(recall[present].mean()) if n else float("nan"),
        "macro_f1": float(f1[seen].mean()) if n else float("nan"),
        "majority_rate": float(support.max() / n) if n else float("nan"),
        "confusion": cm.tolist(),
    }
