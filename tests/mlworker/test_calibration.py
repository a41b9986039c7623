import math

import numpy as np
import pytest
import torch

from mlworker.calibration import (
    calibrate,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    softmax_with_temperature,
)


def over_confident_model(n=3000, classes=14, sharpen=3.0, seed=0):
    """Labels drawn from softmax(z), so z is calibrated; the model reports sharpen * z."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, classes, generator=g) * 1.5
    labels = torch.multinomial(torch.softmax(z, dim=1), 1, generator=g).squeeze(1)
    return z * sharpen, labels


def test_ece_of_a_hand_example():
    probs = np.array([[0.9, 0.1], [0.6, 0.4]])
    labels = np.array([0, 1])
    # bin (0.867, 0.933]: accuracy 1, confidence 0.9; bin (0.533, 0.6]: accuracy 0, conf 0.6
    assert expected_calibration_error(probs, labels) == pytest.approx((0.1 + 0.6) / 2)
    bins = reliability_bins(probs, labels)
    assert len(bins) == 15 and sum(b.count for b in bins) == 2


def test_temperature_scaling_lowers_ece_of_an_over_confident_model():
    logits, labels = over_confident_model()
    report = calibrate(logits, labels)
    assert report.temperature == pytest.approx(3.0, rel=0.15)
    assert report.ece_before > 0.1
    assert report.ece_after < report.ece_before / 3
    assert report.nll_after < report.nll_before


def test_temperature_never_changes_the_predicted_class():
    logits, labels = over_confident_model(n=500)
    t = fit_temperature(logits, labels)
    before = softmax_with_temperature(logits).argmax(1)
    after = softmax_with_temperature(logits, t).argmax(1)
    assert torch.equal(before, after)


def test_an_under_confident_model_gets_a_temperature_below_one():
    logits, labels = over_confident_model(sharpen=0.4, seed=1)
    assert fit_temperature(logits, labels) < 0.7
    assert math.isfinite(fit_temperature(logits, labels))
