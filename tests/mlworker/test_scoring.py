import json
import math
import shutil

import numpy as np
import pytest
import torch

from mlworker import taxonomy
from mlworker.data import decode_file
from mlworker.device import choose_runtime
from mlworker.model import build_classifier, make_checkpoint, save_checkpoint
from mlworker.score import Scorer, get_args_parser, main, score_images
from tests.paths import SHARED_DATA

# torchvision 0.29 deprecates its image IO (see mlworker/data.py); pytest resets filters
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


PBC = SHARED_DATA / "pbc"
CPU = choose_runtime("cpu", "fp32")


def tiny_checkpoint(temperature=1.0):
    torch.manual_seed(0)
    model = build_classifier("resnet18")
    return make_checkpoint(model, arch="resnet18", input_size=32, temperature=temperature)


@pytest.fixture(scope="module")
def checkpoint():
    return tiny_checkpoint()


@pytest.fixture
def images(tmp_path):
    """Five real cells (one per class folder) copied out of the shared data."""
    paths = []
    for code in ("NE", "LY", "EO", "BA", "NR"):
        src = sorted((PBC / code).glob("*.jpg"))[0]
        paths.append(shutil.copy(src, tmp_path / f"{code}.jpg"))
    return paths


def test_scores_have_calibrated_probabilities_uncertainty_and_features(checkpoint, images):
    scores = score_images(checkpoint, images, batch_size=4, runtime=CPU)
    assert [s.source for s in scores] == [str(p) for p in images]
    for s in scores:
        assert s.error is None
        assert s.probabilities.shape == (14,)
        assert s.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        assert s.top_class == taxonomy.CODES[int(s.probabilities.argmax())]
        assert s.max_probability == pytest.approx(float(s.probabilities.max()))
        top1, top2 = np.sort(s.probabilities)[::-1][:2]
        assert s.margin == pytest.approx(top1 - top2, abs=1e-6)
        assert 0 <= s.entropy <= math.log(14) + 1e-6
        assert s.features.shape == (512,)


def test_scoring_is_deterministic_and_independent_of_batching(checkpoint, images):
    scorer = Scorer(checkpoint, runtime=CPU)
    first = scorer.score(images, batch_size=4, num_workers=0)
    again = scorer.score(images, batch_size=4, num_workers=0)
    fresh = Scorer(checkpoint, runtime=CPU).score(images, batch_size=4, num_workers=1)
    single = scorer.score(images, batch_size=1, num_workers=0)
    for a, b, c, d in zip(first, again, fresh, single, strict=True):
        assert np.array_equal(a.probabilities, b.probabilities)
        assert np.array_equal(a.features, b.features)
        assert np.array_equal(a.probabilities, c.probabilities)
        np.testing.assert_allclose(a.probabilities, d.probabilities, atol=1e-5)


def test_a_corrupt_image_gets_an_error_and_the_rest_of_the_batch_is_scored(
    checkpoint, images, tmp_path
):
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(images[0].read_bytes()[:2000])
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("not a jpeg")
    empty = tmp_path / "empty.jpg"
    empty.touch()
    batch = [images[0], truncated, images[1], not_an_image, empty, tmp_path / "gone.jpg"]
    clean = Scorer(checkpoint, runtime=CPU).score(images[:2], batch_size=8)
    for decode_on_device in (False, True):
        scorer = Scorer(checkpoint, runtime=CPU, decode_on_device=decode_on_device)
        scores = scorer.score(batch, batch_size=8, num_workers=0)
        assert [s.error is None for s in scores] == [True, False, True, False, False, False]
        assert "truncated" in scores[1].error
        assert "empty file" in scores[4].error
        assert "FileNotFoundError" in scores[5].error
        assert scores[1].probabilities is None
        np.testing.assert_allclose(scores[0].probabilities, clean[0].probabilities, atol=1e-6)
        np.testing.assert_allclose(scores[2].probabilities, clean[1].probabilities, atol=1e-6)


def test_device_side_decoding_matches_worker_decoding(checkpoint, images):
    on_workers = Scorer(checkpoint, runtime=CPU, decode_on_device=False).score(images)
    on_device = Scorer(checkpoint, runtime=CPU, decode_on_device=True).score(images)
    for a, b in zip(on_workers, on_device, strict=True):
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)


def test_decoded_tensors_score_like_their_files(checkpoint, images):
    from_files = score_images(checkpoint, images, runtime=CPU)
    tensors = [decode_file(p) for p in images]
    from_tensors = score_images(checkpoint, tensors, runtime=CPU)
    assert from_tensors[0].source == "tensor[0]"
    for a, b in zip(from_files, from_tensors, strict=True):
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)


def test_the_checkpoint_temperature_is_applied(images):
    sharp = score_images(tiny_checkpoint(temperature=1.0), images, runtime=CPU)
    soft = score_images(tiny_checkpoint(temperature=4.0), images, runtime=CPU)
    for a, b in zip(sharp, soft, strict=True):
        assert a.top_class == b.top_class
        assert b.max_probability < a.max_probability
        assert b.entropy > a.entropy
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-6)


def test_bf16_autocast_on_cpu_stays_close_to_fp32(checkpoint, images):
    fp32 = score_images(checkpoint, images, runtime=CPU)
    bf16 = score_images(checkpoint, images, runtime=choose_runtime("cpu", "bf16"))
    for a, b in zip(fp32, bf16, strict=True):
        assert np.abs(a.probabilities - b.probabilities).max() < 0.05


def test_cli_writes_json_with_one_entry_per_image(checkpoint, images, tmp_path):
    ckpt = save_checkpoint(checkpoint, tmp_path / "ckpt.pt")
    (tmp_path / "bad.jpg").write_text("nope")
    out = tmp_path / "scores.json"
    args = get_args_parser().parse_args(
        [
            "--checkpoint",
            str(ckpt),
            "--images",
            str(tmp_path),
            "--json",
            str(out),
            "--device",
            "cpu",
        ]
    )
    main(args)
    payload = json.loads(out.read_text())
    assert payload["class_codes"] == list(taxonomy.CODES)
    results = {r["source"].rsplit("/", 1)[-1]: r for r in payload["results"]}
    assert set(results) == {"NE.jpg", "LY.jpg", "EO.jpg", "BA.jpg", "NR.jpg", "bad.jpg"}
    assert results["bad.jpg"]["error"]
    assert sum(results["NE.jpg"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_scoring_crops_like_the_checkpoint_was_trained():
    """Two images that differ only outside the centre: a checkpoint trained on a 0.4 centre
    crop gives them the same scores, one trained on the whole image does not."""
    torch.manual_seed(0)
    model = build_classifier("resnet18")
    centre = torch.full((3, 140, 140), 90, dtype=torch.uint8)
    pair = []
    for border in (30, 220):
        image = torch.full((3, 360, 363), border, dtype=torch.uint8)
        image[:, 110:250, 111:251] = centre
        pair.append(image)
    cropped = make_checkpoint(model, arch="resnet18", input_size=32, args={"crop": 0.35})
    whole = make_checkpoint(model, arch="resnet18", input_size=32, args={})
    a, b = Scorer(cropped, runtime=CPU).score(pair)
    assert np.allclose(a.logits, b.logits, atol=1e-5)
    a, b = Scorer(whole, runtime=CPU).score(pair)
    assert not np.allclose(a.logits, b.logits, atol=1e-3)
