import math
import shutil

import numpy as np
import pytest
import torch

from mlworker.calibration import (
    calibrate,
    expected_calibration_error,
    fit_temperature,
    get_args_parser,
    main,
    reliability_bins,
    softmax_with_temperature,
)
from mlworker.data import discover_samples
from mlworker.device import choose_runtime
from mlworker.model import build_classifier, load_checkpoint, make_checkpoint, save_checkpoint
from mlworker.score import Scorer, score_labelled
from mlworker.taxonomy import index_of
from tests.paths import SHARED_DATA


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


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
def test_cli_fits_the_temperature_on_the_readable_images_only(tmp_path):
    torch.manual_seed(0)
    ckpt = make_checkpoint(build_classifier("resnet18"), arch="resnet18", input_size=32)
    checkpoint_path = save_checkpoint(ckpt, tmp_path / "ckpt.pt")
    data = tmp_path / "val"
    for code in ("NE", "LY"):
        (data / code).mkdir(parents=True)
        for src in sorted((SHARED_DATA / "pbc" / code).glob("*.jpg"))[:3]:
            shutil.copy(src, data / code / src.name)
    (data / "LY" / "broken.jpg").write_bytes(b"\xff\xd8broken")

    scored = score_labelled(Scorer(checkpoint_path, runtime=choose_runtime("cpu")),
                            discover_samples(data), batch_size=4)  # fmt: skip
    assert [source for source, _ in scored.unreadable] == [str(data / "LY" / "broken.jpg")]
    assert scored.logits.shape == scored.probabilities.shape == (6, 14)
    assert sorted(scored.labels.tolist()) == sorted([index_of("NE")] * 3 + [index_of("LY")] * 3)
    assert np.allclose(
        scored.probabilities, softmax_with_temperature(torch.from_numpy(scored.logits)), atol=1e-5
    )

    out = tmp_path / "calibrated.pt"
    args = ["--checkpoint", str(checkpoint_path), "--data", str(data), "--out", str(out),
            "--device", "cpu", "--batch-size", "4", "--workers", "0"]  # fmt: skip
    report = main(get_args_parser().parse_args(args))
    assert report.n_images == 6
    calibrated = load_checkpoint(out)
    assert calibrated["temperature"] == report.temperature > 0
    assert calibrated["metrics"]["calibration"]["n_images"] == 6
