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

The counts and the per-class rates come from scikit-learn; this module only adds the
``None`` rules above and the means over classes and groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats
from sklearn import metrics as sklearn_metrics

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
    # scikit-learn silently drops a prediction outside ``labels``: a wrong class index
    # would shrink the counts unnoticed, so it is refused here.
    for name, arr in (("y_true", true), ("y_pred", pred)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} has labels outside 0..{num_classes - 1}")
    if true.size == 0:  # scikit-learn refuses empty input; an empty split counts nothing
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    counts = sklearn_metrics.confusion_matrix(true, pred, labels=np.arange(num_classes))
    return counts.astype(np.int64)


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _none_if_nan(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]


def per_class_rates(
    confusion: np.ndarray,
) -> tuple[list[float | None], list[float | None], list[float | None]]:
    """(TPR, precision, F1) per class; ``None`` where undefined.

    ``zero_division=nan`` makes scikit-learn leave recall undefined for a class without
    images and precision for a class nothing was predicted as, our ``None``. Its F1 is
    ``2 tp / (2 tp + fp + fn)``: 0 for a class with images and no hit, as we want, but
    also 0 for a class without images that was predicted, which has no F1 here.
    """
    cm = np.asarray(confusion, dtype=np.int64)
    num_classes = cm.shape[0]
    support = cm.sum(axis=1)
    if not support.any():
        undefined: list[float | None] = [None] * num_classes
        return undefined, list(undefined), list(undefined)
    # scikit-learn scores label pairs: one (true, predicted) pair per counted image
    cells = np.indices(cm.shape).reshape(2, -1)
    y_true, y_pred = np.repeat(cells, cm.ravel(), axis=1)
    precision, recall, f1, _ = sklearn_metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=np.arange(num_classes), average=None, zero_division=np.nan
    )
    f1_defined = np.where(support > 0, f1, np.nan)
    return _none_if_nan(recall), _none_if_nan(precision), _none_if_nan(f1_defined)


def tpr_interval(hits: int, n: int) -> list[float] | None:
    """The 95 % Wilson score interval of a class's TPR (scipy), None without images."""
    if n == 0:
        return None
    interval = scipy_stats.binomtest(hits, n).proportion_ci(confidence_level=0.95, method="wilson")
    return [round(float(interval.low), 4), round(float(interval.high), 4)]


def mean_tpr_intervals(
    confusion: np.ndarray, codes: Sequence[str], draws: int = 2000, seed: int = 0
) -> dict[str, list[float] | None]:
    """95 % intervals of balanced accuracy and the two group means.

    A parametric bootstrap: each class's hits are redrawn as Binomial(n, TPR) with that
    class's own n, so a class of 5 images widens the interval as much as it should, and the
    means are taken over the redrawn TPRs. Seeded: the same matrix gives the same interval.
    """
    cm = np.asarray(confusion, dtype=np.int64)
    support = cm.sum(axis=1)
    present = support > 0
    out: dict[str, list[float] | None] = {}
    groups = {
        "balanced_accuracy_ci95": np.ones(len(codes), dtype=bool),
        "normal_tpr_ci95": np.array([taxonomy.by_code(c).group == "normal" for c in codes]),
        "abnormal_tpr_ci95": np.array([taxonomy.by_code(c).group == "abnormal" for c in codes]),
    }
    rng = np.random.default_rng(seed)
    safe = np.maximum(support, 1)
    redrawn = rng.binomial(safe, np.diag(cm) / safe, size=(draws, len(codes))) / safe
    for key, members in groups.items():
        chosen = members & present
        if not chosen.any():
            out[key] = None
            continue
        means = redrawn[:, chosen].mean(axis=1)
        low, high = np.percentile(means, [2.5, 97.5])
        out[key] = [round(float(low), 4), round(float(high), 4)]
    return out


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
        **mean_tpr_intervals(cm, codes),
        "per_class": {
            code: {
                "n": int(cm[k].sum()),
                "tpr": tpr[k],
                "tpr_ci95": tpr_interval(int(cm[k, k]), int(cm[k].sum())),
                "precision": precision[k],
            }
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
