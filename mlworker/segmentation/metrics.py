"""Agreement between a predicted and an expert segmentation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# An image counts as a segmentation error when its WBC-mask IoU is below this (as in the
# reference paper's segmentation error rate).
SER_IOU_THRESHOLD = 0.8


def dice(predicted: np.ndarray, expected: np.ndarray) -> float:
    """Dice coefficient of two boolean masks; 1.0 when both are empty."""
    predicted, expected = predicted.astype(bool), expected.astype(bool)
    total = int(predicted.sum()) + int(expected.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(predicted, expected).sum()) / total


def iou(predicted: np.ndarray, expected: np.ndarray) -> float:
    """Intersection over union of two boolean masks; 1.0 when both are empty."""
    predicted, expected = predicted.astype(bool), expected.astype(bool)
    union = int(np.logical_or(predicted, expected).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(predicted, expected).sum()) / union


def pixel_error(predicted_labels: np.ndarray, expected_labels: np.ndarray) -> float:
    """Share of pixels given the wrong one of the three regions (label images 0/128/255)."""
    if predicted_labels.shape != expected_labels.shape:
        raise ValueError(
            f"label images differ in shape: {predicted_labels.shape} vs {expected_labels.shape}"
        )
    return float(np.mean(predicted_labels != expected_labels))


def segmentation_error_rate(
    wbc_iou_by_class: Mapping[str, Sequence[float]], threshold: float = SER_IOU_THRESHOLD
) -> float:
    """Share of images with WBC IoU below ``threshold``, per class, weighted by class size.

    Weighting each class's error rate by its share of the images is the paper's weighted
    SER; it equals the plain share over all images, and is written per class so that the
    per-class rates and the overall figure come from one definition.
    """
    total = sum(len(values) for values in wbc_iou_by_class.values())
    if total == 0:
        return float("nan")
    weighted = 0.0
    for values in wbc_iou_by_class.values():
        if len(values) == 0:
            continue
        rate = float(np.mean(np.asarray(values) < threshold))
        weighted += rate * len(values) / total
    return weighted
