"""Classification metrics from a confusion matrix, in the paper's terms.

Rows of the confusion matrix are true classes, columns predicted classes, both in
``taxonomy.CODES`` order. TPR is recall. A class without images has no TPR: it is
reported as ``None`` (JSON ``null``, "n/a" in the UI), never as 0 or 1, and it is left
out of every mean. Likewise precision is ``None`` for a class nothing was predicted as.

- ``balanced_accuracy``: mean TPR over the classes that have images.
- ``normal_tpr`` / ``abnormal_tpr``: the same mean restricted to each group (the
  paper's two headline figures: 93.4 % normal, 83.3 % abnormal).
- ``macro_f1``: mean F1 over the classes that have images (a class with images but no
  correct prediction counts as F1 = 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mlworker import taxonomy


def confusion_matrix(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    num_classes: int = len(taxonomy.CODES),
) -> np.ndarray:
    """Counts, shape (num_classes, num_classes), rows = true, columns = predicted."""
    true = np.asarray(y_true, dtype=np.int64)
    pred = np.asarray(y_pred, dtype=np.int64)
    if true.shape != pred.shape:
        raise ValueError(f"y_true {true.shape} and y_pred {pred.shape} differ in shape")
    for name, arr in (("y_true", true), ("y_pred", pred)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} has labels outside 0..{num_classes - 1}")
    flat = np.bincount(true * num_classes + pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def per_class_rates(
    confusion: np.ndarray,
) -> tuple[list[float | None], list[float | None], list[float | None]]:
    """(TPR, precision, F1) per class; ``None`` where undefined."""
    cm = np.asarray(confusion, dtype=np.int64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    hits = np.diag(cm)
    tpr: list[float | None] = []
    precision: list[float | None] = []
    f1: list[float | None] = []
    for k in range(cm.shape[0]):
        recall = float(hits[k] / support[k]) if support[k] else None
        prec = float(hits[k] / predicted[k]) if predicted[k] else None
        tpr.append(recall)
        precision.append(prec)
        if recall is None:
            f1.append(None)
        elif hits[k] == 0:
            f1.append(0.0)
        else:
            assert prec is not None
            f1.append(2 * prec * recall / (prec + recall))
    return tpr, precision, f1


def classification_metrics(
    confusion: np.ndarray,
    codes: Sequence[str] = taxonomy.CODES,
) -> dict[str, Any]:
    """The evaluation report (without ECE, which needs probabilities)."""
    cm = np.asarray(confusion, dtype=np.int64)
    if cm.shape != (len(codes), len(codes)):
        raise ValueError(f"confusion matrix {cm.shape} does not fit {len(codes)} classes")
    n_images = int(cm.sum())
    tpr, precision, f1 = per_class_rates(cm)
    group_of = {c: taxonomy.by_code(c).group for c in codes}
    return {
        "n_images": n_images,
        "accuracy": float(np.trace(cm) / n_images) if n_images else None,
        "balanced_accuracy": _mean_or_none(tpr),
        "macro_f1": _mean_or_none(f1),
        "normal_tpr": _mean_or_none(
            [t for t, c in zip(tpr, codes, strict=True) if group_of[c] == "normal"]
        ),
        "abnormal_tpr": _mean_or_none(
            [t for t, c in zip(tpr, codes, strict=True) if group_of[c] == "abnormal"]
        ),
        "per_class": {
            code: {"n": int(cm[k].sum()), "tpr": tpr[k], "precision": precision[k]}
            for k, code in enumerate(codes)
        },
        "confusion": cm.tolist(),
    }


def weak_classes(metrics: dict[str, Any], threshold: float = 0.9) -> list[str]:
    """Codes whose TPR is below ``threshold`` (classes without images are not weak)."""
    return [
        code
        for code, row in metrics["per_class"].items()
        if row["tpr"] is not None and row["tpr"] < threshold
    ]
