"""Segmentation: metrics, robustness, determinism, CLI output and a smoke run on real cells."""

import argparse
import csv
import io
import itertools
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from mlworker.segmentation import (
    ImageFormatError,
    decode_label_png,
    encode_label_png,
    read_image,
    segment_cell,
    to_rgb_uint8,
)
from mlworker.segmentation.evaluate import get_args_parser, main
from mlworker.segmentation.graphcut import grid_graph_cut
from mlworker.segmentation.metrics import dice, iou, pixel_error, segmentation_error_rate
from tests.paths import SHARED_DATA

WBCSEG = SHARED_DATA / "wbcseg"
needs_data = pytest.mark.skipif(not WBCSEG.is_dir(), reason="shared reference data missing")

BACKGROUND = (245, 228, 205)
RED_CELL = (215, 150, 160)
CYTOPLASM = (200, 182, 222)
NUCLEUS = (95, 55, 145)


def disk(shape, centre, radius):
    rows, cols = np.indices(shape)
    return np.hypot(rows - centre[0], cols - centre[1]) < radius


def synthetic_cell(shape=(120, 120), cells=((60, 60),), red_cells=((15, 20), (100, 95))):
    """A smear-like image: pale background, red cells, and white cells (lilac with a purple
    nucleus) at the given centres. Returns the image and the masks of the first cell."""
    rng = np.random.default_rng(0)
    image = np.empty((*shape, 3), dtype=np.float64)
    image[:] = BACKGROUND
    for centre in red_cells:
        image[disk(shape, centre, 14)] = RED_CELL
    wbc = nucleus = None
    for i, centre in enumerate(cells):
        cell, core = disk(shape, centre, 26), disk(shape, centre, 14)
        image[cell] = CYTOPLASM
        image[core] = NUCLEUS
        if i == 0:
            wbc, nucleus = cell, core
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), wbc, nucleus


# --- metrics on masks with known answers -------------------------------------------------


def test_dice_and_iou_of_half_overlapping_squares():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[0:4, 0:4] = True  # 16 pixels
    b[0:4, 2:6] = True  # 16 pixels, 8 shared
    assert dice(a, b) == pytest.approx(0.5)
    assert iou(a, b) == pytest.approx(8 / 24)
    assert dice(a, a) == 1.0 and iou(a, a) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0


def test_dice_and_iou_of_two_empty_masks_is_perfect_agreement():
    empty = np.zeros((4, 4), bool)
    assert dice(empty, empty) == 1.0
    assert iou(empty, empty) == 1.0


def test_pixel_error_counts_pixels_in_the_wrong_region():
    expected = np.array([[0, 128], [255, 255]], np.uint8)
    predicted = np.array([[0, 255], [255, 128]], np.uint8)
    assert pixel_error(predicted, expected) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shape"):
        pixel_error(predicted, expected[:1])


def test_segmentation_error_rate_is_weighted_by_class_size():
    # NE: 1 of 4 below 0.8; LY: 1 of 1 below -> (0.25 * 4 + 1.0 * 1) / 5 = 0.4
    rate = segmentation_error_rate({"NE": [0.9, 0.95, 0.7, 0.85], "LY": [0.5]})
    assert rate == pytest.approx(0.4)
    assert segmentation_error_rate({"NE": [0.8]}) == 0.0  # the threshold itself is no error


# --- the segmenter on synthetic cells ------------------------------------------------------


def test_segments_a_synthetic_cell_accurately():
    image, wbc, nucleus = synthetic_cell()
    result = segment_cell(image)
    assert result.ok, result.reason
    assert dice(result.wbc_mask, wbc) > 0.93
    assert dice(result.nucleus_mask, nucleus) > 0.9
    assert 0.5 < result.quality <= 1.0
    assert {"slic", "bw", "nc", "total"} <= set(result.timings_ms)


def test_same_input_gives_identical_output():
    image, _, _ = synthetic_cell()
    first, second = segment_cell(image), segment_cell(image.copy())
    assert np.array_equal(first.wbc_mask, second.wbc_mask)
    assert np.array_equal(first.nucleus_mask, second.nucleus_mask)
    assert first.quality == second.quality


def test_picks_the_cell_nearest_the_centre_when_there_are_several():
    image, wbc, _ = synthetic_cell(
        shape=(160, 160), cells=((76, 84), (30, 28), (130, 135)), red_cells=((140, 20),)
    )
    result = segment_cell(image)
    assert result.ok, result.reason
    assert dice(result.wbc_mask, wbc) > 0.9


@pytest.mark.parametrize("shape", [(120, 120), (300, 300), (363, 360)])
def test_masks_have_the_input_size(shape):
    scale = shape[0] / 120
    image, _, _ = synthetic_cell(
        shape=shape,
        cells=((shape[0] / 2, shape[1] / 2),),
        red_cells=((15 * scale, 20 * scale),),
    )
    result = segment_cell(image)
    assert result.wbc_mask.shape == shape and result.nucleus_mask.shape == shape
    assert result.wbc_mask.dtype == bool


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (np.full((120, 120, 3), 200, np.uint8), "uniform"),
        (np.zeros((120, 120, 3), np.uint8), "uniform"),
        (synthetic_cell(cells=((18, 18),), red_cells=((95, 95),))[0], "centre"),
        (np.dstack([np.full((120, 120), c, np.uint8) for c in BACKGROUND]), "uniform"),
    ],
    ids=["uniform-grey", "empty-black", "cell-in-a-corner", "background-only"],
)
def test_failed_result_with_a_reason_instead_of_an_exception(image, reason):
    result = segment_cell(image)
    assert not result.ok
    assert reason in result.reason
    assert result.quality == 0.0
    assert not result.wbc_mask.any() and result.wbc_mask.shape == image.shape[:2]


def test_no_cell_near_the_centre_fails_even_with_noise():
    rng = np.random.default_rng(1)
    noise = np.clip(rng.normal(220, 20, (120, 120, 3)), 0, 255).astype(np.uint8)
    result = segment_cell(noise)
    assert not result.ok or result.quality < 0.5


# --- input formats -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((120, 120), np.uint8),
        np.zeros((120, 120, 1), np.uint8),
        Image.new("L", (120, 120)),
        Image.new("I;16", (120, 120)),
    ],
    ids=["2d", "one-channel", "pil-L", "pil-16-bit-gray"],
)
def test_grayscale_is_refused_with_a_clear_error(image):
    with pytest.raises(ImageFormatError, match="colour"):
        segment_cell(image)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((8, 8, 3), np.uint8), "outside"),
        (np.zeros((120, 120, 2), np.uint8), "not RGB"),
        (np.full((120, 120, 3), np.nan, np.float32), "NaN"),
        (np.full((120, 120, 3), 3.0, np.float32), "0..1"),
        (np.zeros((120, 120, 3), np.int64), "pixel type"),
    ],
    ids=["too-small", "two-channels", "nan", "float-out-of-range", "int64"],
)
def test_unusable_arrays_are_refused(image, message):
    with pytest.raises(ImageFormatError, match=message):
        to_rgb_uint8(image)


def test_rgba_and_16_bit_give_the_same_result_as_8_bit_rgb():
    image, _, _ = synthetic_cell()
    reference = segment_cell(image)
    rgba = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
    sixteen = image.astype(np.uint16) * 257
    for variant in (rgba, Image.fromarray(rgba), sixteen, image / 255.0):
        result = segment_cell(variant)
        assert np.array_equal(result.wbc_mask, reference.wbc_mask)
        assert np.array_equal(result.nucleus_mask, reference.nucleus_mask)


def test_transparent_pixels_become_white():
    rgba = np.zeros((20, 20, 4), np.uint8)
    assert (to_rgb_uint8(rgba) == 255).all()


def test_label_png_round_trip():
    image, _, _ = synthetic_cell()
    result = segment_cell(image)
    data = result.to_png()
    wbc, nucleus = decode_label_png(data)
    assert np.array_equal(wbc, result.wbc_mask)
    assert np.array_equal(nucleus, result.nucleus_mask)
    labels = np.asarray(Image.open(io.BytesIO(data)))
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 128, 255}
    assert encode_label_png(wbc, nucleus) == data


# --- evaluation CLI and real images --------------------------------------------------------


def small_dataset(tmp_path, subset, names):
    source = WBCSEG / subset
    (tmp_path / "images").mkdir(parents=True)
    (tmp_path / "masks").mkdir()
    with open(source / "labels.csv", newline="") as handle:
        labels = {row["image"]: row["diff14"] for row in csv.DictReader(handle)}
    with open(tmp_path / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "diff14"])
        for name in names:
            shutil.copy(source / "images" / name, tmp_path / "images" / name)
            shutil.copy(source / "masks" / name, tmp_path / "masks" / name)
            writer.writerow([name, labels[name]])
    return tmp_path


@needs_data
def test_evaluate_cli_writes_json_of_the_agreed_shape(tmp_path, capsys):
    data = small_dataset(tmp_path / "data", "tecom", ["001.png", "002.png", "003.png"])
    out = tmp_path / "report.json"
    overlays = tmp_path / "overlays"
    args = get_args_parser().parse_args(
        ["evaluate", "--data", str(data), "--json", str(out), "--overlays", str(overlays)]
    )
    main(args)
    report = json.loads(out.read_text())
    assert set(report) == {"n_images", "overall", "per_class"}
    assert report["n_images"] == 3
    assert set(report["overall"]) == {
        "wbc_dice",
        "wbc_iou",
        "nucleus_dice",
        "pixel_error",
        "ser",
        "ms_per_image",
    }
    for row in report["per_class"].values():
        assert set(row) == {"n", "wbc_dice", "wbc_iou", "nucleus_dice", "ser"}
    assert sum(row["n"] for row in report["per_class"].values()) == 3
    assert sorted(p.name for p in overlays.iterdir()) == ["001.png", "002.png", "003.png"]
    assert "overall" in capsys.readouterr().out


def test_every_cli_flag_has_help():
    parser = get_args_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in commands.choices["evaluate"]._actions:
        assert action.help, action.dest


@needs_data
@pytest.mark.parametrize(
    ("subset", "names"),
    [
        ("tecom", ["001.png", "002.png", "010.png", "050.png", "120.png", "200.png"]),
        ("cellavision", ["005.png", "020.png", "050.png", "070.png", "090.png"]),
    ],
)
def test_smoke_on_real_cells_beats_a_floor_a_broken_segmenter_would_not_reach(subset, names):
    wbc_scores, nucleus_scores = [], []
    for name in names:
        image = read_image(WBCSEG / subset / "images" / name)
        expected_wbc, expected_nucleus = decode_label_png(WBCSEG / subset / "masks" / name)
        result = segment_cell(image)
        assert result.ok, (name, result.reason)
        wbc_scores.append(dice(result.wbc_mask, expected_wbc))
        nucleus_scores.append(dice(result.nucleus_mask, expected_nucleus))
    assert np.mean(wbc_scores) > 0.88, wbc_scores
    assert np.mean(nucleus_scores) > 0.85, nucleus_scores


@pytest.mark.skipif(not (SHARED_DATA / "pbc").is_dir(), reason="shared reference data missing")
def test_real_cellavision_exports_segment_without_failure():
    paths = sorted((SHARED_DATA / "pbc").glob("*/*.jpg"))[::400][:9]
    for path in paths:
        image = read_image(path)
        result = segment_cell(image)
        assert result.ok, (path.name, result.reason)
        assert result.wbc_mask.shape == image.shape[:2]  # 360x363, a few 366x369
        assert result.nucleus_mask.sum() < result.wbc_mask.sum()


def test_truncated_file_is_refused_with_its_path(tmp_path):
    image, _, _ = synthetic_cell()
    path = tmp_path / "cell.png"
    Image.fromarray(image).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ImageFormatError, match=r"cell\.png"):
        read_image(path)


# --- the graph cut itself ------------------------------------------------------------------


def grid_energy(mask, cost_fg, cost_bg, weight_right, weight_down):
    return (
        cost_fg[mask].sum()
        + cost_bg[~mask].sum()
        + (weight_right * (mask[:, 1:] != mask[:, :-1])).sum()
        + (weight_down * (mask[1:] != mask[:-1])).sum()
    )


def test_graph_cut_finds_the_minimum_energy_labelling_of_small_grids():
    rng = np.random.default_rng(0)
    for _ in range(40):
        height, width = rng.integers(1, 4, size=2)
        cost_fg = rng.normal(size=(height, width))
        cost_bg = rng.normal(size=(height, width))
        weight_right = rng.uniform(0, 1, (height, width - 1))
        weight_down = rng.uniform(0, 1, (height - 1, width))
        mask = grid_graph_cut(cost_fg, cost_bg, weight_right, weight_down)
        best = min(
            grid_energy(np.array(bits, bool).reshape(height, width), cost_fg, cost_bg,
                        weight_right, weight_down)
            for bits in itertools.product([0, 1], repeat=int(height * width))
        )  # fmt: skip
        energy = grid_energy(mask, cost_fg, cost_bg, weight_right, weight_down)
        assert energy <= best + 1e-3  # integer rounding of the capacities


def test_graph_cut_smooths_a_noisy_square():
    rng = np.random.default_rng(0)
    truth = np.zeros((40, 40), bool)
    truth[10:30, 12:32] = True
    noisy = truth + rng.normal(0, 0.7, truth.shape)
    weights = np.ones((40, 39)), np.ones((39, 40))
    mask = grid_graph_cut((noisy - 1) ** 2, noisy**2, *weights)
    assert (mask == truth).mean() > 0.97 > 0.9 > ((noisy > 0.5) == truth).mean()
