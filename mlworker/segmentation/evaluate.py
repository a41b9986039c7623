"""Evaluate the segmenter against expert masks: ``python -m mlworker.segmentation evaluate``."""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

from mlworker.segmentation.imageio import decode_label_png, label_image, read_image
from mlworker.segmentation.metrics import (
    SER_IOU_THRESHOLD,
    dice,
    iou,
    pixel_error,
    segmentation_error_rate,
)
from mlworker.segmentation.segment import SegmentationParams, segment_cell

# (image) -> (wbc_mask, nucleus_mask); lets the benchmark evaluate a baseline the same way.
Segmenter = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class ImageScore:
    image: str
    diff14: str
    wbc_dice: float
    wbc_iou: float
    nucleus_dice: float
    pixel_error: float
    ms: float
    ok: bool
    quality: float


def read_labels(data_dir: Path) -> list[tuple[str, str]]:
    """``(image file name, 14-Diff code)`` rows of ``labels.csv``, in file order."""
    with open(data_dir / "labels.csv", newline="") as handle:
        return [(row["image"], row["diff14"]) for row in csv.DictReader(handle)]


def proposed_segmenter(params: SegmentationParams) -> Callable[[np.ndarray], Any]:
    def run(image: np.ndarray) -> Any:
        return segment_cell(image, params)

    return run


def evaluate_dataset(
    data_dir: Path,
    segmenter: Callable[[np.ndarray], Any],
    overlay_dir: Path | None = None,
    limit: int | None = None,
) -> list[ImageScore]:
    """Segment every image listed in ``labels.csv`` and score it against its mask.

    ``segmenter`` returns either a ``SegmentationResult`` or a ``(wbc, nucleus)`` tuple.
    Time is measured around the segmenter call only, not image decoding.
    """
    rows = read_labels(data_dir)[:limit]
    scores = []
    if overlay_dir is not None:
        overlay_dir.mkdir(parents=True, exist_ok=True)
    for name, diff14 in rows:
        image = read_image(data_dir / "images" / name)
        expected_wbc, expected_nucleus = decode_label_png(data_dir / "masks" / name)
        start = time.perf_counter()
        output = segmenter(image)
        ms = (time.perf_counter() - start) * 1e3
        if isinstance(output, tuple):
            wbc, nucleus = output
            ok, quality = bool(wbc.any()), float("nan")
        else:
            wbc, nucleus, ok, quality = (
                output.wbc_mask,
                output.nucleus_mask,
                output.ok,
                output.quality,
            )
        scores.append(
            ImageScore(
                image=name,
                diff14=diff14,
                wbc_dice=dice(wbc, expected_wbc),
                wbc_iou=iou(wbc, expected_wbc),
                nucleus_dice=dice(nucleus, expected_nucleus),
                pixel_error=pixel_error(
                    label_image(wbc, nucleus), label_image(expected_wbc, expected_nucleus)
                ),
                ms=ms,
                ok=ok,
                quality=quality,
            )
        )
        if overlay_dir is not None:
            save_overlay(
                overlay_dir / f"{Path(name).stem}.png",
                image,
                (expected_wbc, expected_nucleus),
                (wbc, nucleus),
            )
    return scores


def summarise(scores: list[ImageScore]) -> dict[str, Any]:
    """The JSON report: ``n_images``, ``overall`` and ``per_class`` (see the issue)."""
    by_class: dict[str, list[ImageScore]] = {}
    for score in scores:
        by_class.setdefault(score.diff14, []).append(score)

    def mean(items: list[ImageScore], key: str) -> float:
        return float(np.mean([getattr(item, key) for item in items])) if items else float("nan")

    ious = {code: [item.wbc_iou for item in items] for code, items in by_class.items()}
    return {
        "n_images": len(scores),
        "overall": {
            "wbc_dice": mean(scores, "wbc_dice"),
            "wbc_iou": mean(scores, "wbc_iou"),
            "nucleus_dice": mean(scores, "nucleus_dice"),
            "pixel_error": mean(scores, "pixel_error"),
            "ser": segmentation_error_rate(ious),
            "ms_per_image": mean(scores, "ms"),
        },
        "per_class": {
            code: {
                "n": len(items),
                "wbc_dice": mean(items, "wbc_dice"),
                "wbc_iou": mean(items, "wbc_iou"),
                "nucleus_dice": mean(items, "nucleus_dice"),
                "ser": segmentation_error_rate({code: ious[code]}),
            }
            for code, items in sorted(by_class.items())
        },
    }


def format_table(summary: dict[str, Any]) -> str:
    """A fixed-width table, one row per class and one overall."""
    header = f"{'class':<8}{'n':>5}{'WBC Dice':>10}{'WBC IoU':>9}{'Nuc Dice':>10}{'SER %':>8}"
    lines = [header, "-" * len(header)]
    for code, row in summary["per_class"].items():
        lines.append(
            f"{code:<8}{row['n']:>5}{row['wbc_dice']:>10.3f}{row['wbc_iou']:>9.3f}"
            f"{row['nucleus_dice']:>10.3f}{100 * row['ser']:>8.1f}"
        )
    overall = summary["overall"]
    lines.append("-" * len(header))
    lines.append(
        f"{'overall':<8}{summary['n_images']:>5}{overall['wbc_dice']:>10.3f}"
        f"{overall['wbc_iou']:>9.3f}{overall['nucleus_dice']:>10.3f}{100 * overall['ser']:>8.1f}"
    )
    lines.append(
        f"pixel error {100 * overall['pixel_error']:.2f} %, "
        f"{overall['ms_per_image']:.1f} ms per image, "
        f"SER = share of images with WBC IoU < {SER_IOU_THRESHOLD}"
    )
    return "\n".join(lines)


def save_overlay(
    path: Path,
    image: np.ndarray,
    expected: tuple[np.ndarray, np.ndarray],
    predicted: tuple[np.ndarray, np.ndarray],
) -> None:
    """Expert outlines (green WBC, cyan nucleus) and predicted ones (red WBC, yellow
    nucleus) over the cell, the image shown plain on the left for comparison."""
    overlay = image.copy()
    colours = [(0, 200, 0), (0, 220, 220), (230, 0, 0), (255, 230, 0)]
    masks = [expected[0], expected[1], predicted[0], predicted[1]]
    for mask, colour in zip(masks, colours, strict=True):
        overlay[find_boundaries(mask, mode="inner")] = colour
    Image.fromarray(np.concatenate([image, overlay], axis=1)).save(path)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlworker.segmentation",
        description="WBC segmentation: evaluate against expert masks",
        add_help=add_help,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    evaluate = commands.add_parser(
        "evaluate", help="segment every image of a dataset and score it against its mask"
    )
    evaluate.add_argument(
        "--data",
        type=Path,
        required=True,
        help="folder with images/, masks/ (0/128/255) and labels.csv (image,diff14)",
    )
    evaluate.add_argument("--json", type=Path, default=None, help="write the summary here")
    evaluate.add_argument(
        "--overlays", type=Path, default=None, help="write one outline PNG per image here"
    )
    evaluate.add_argument(
        "--limit", type=int, default=None, help="evaluate only the first N images"
    )
    add_param_flags(evaluate)
    return parser


_PARAM_HELP = {
    "work_size": "longest side (pixels) of the working image; larger images are downscaled",
    "n_segments": "approximate number of SLIC superpixels",
    "compactness": "SLIC compactness (higher: more regular superpixels)",
    "slic_iterations": "SLIC k-means iterations",
    "histogram_bins": "bins per RGB channel of the colour histograms in the graph cuts",
    "grabcut_iterations": "re-estimate colour models and re-cut this many times (BW)",
    "superpixel_weight": "share of the data term averaged over each superpixel (0..1)",
    "texture_weight": "weight of the superpixel spread-of-S likelihood in the BW cut",
    "smoothness_bw": "boundary smoothness weight of the background/WBC cut",
    "smoothness_nc": "boundary smoothness weight of the nucleus/cytoplasm cut",
    "init_radius": "initial WBC radius as a multiple of the central nucleus radius",
    "neck_width": "cut off parts joined through necks narrower than this x WBC radius",
    "cut_margin": "BW cut box: the mask's box grown by this x its radius (+4 px)",
    "max_centre_distance": "fail when the nucleus is farther from the centre (0..1)",
    "min_contrast": "fail as uniform when every channel's std is below this (0..1)",
}


def add_param_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ``SegmentationParams`` field, default and help from one place."""
    defaults = SegmentationParams()
    for item in fields(SegmentationParams):
        default = getattr(defaults, item.name)
        parser.add_argument(
            f"--{item.name.replace('_', '-')}",
            type=type(default),
            default=default,
            help=f"{_PARAM_HELP[item.name]} (default: {default})",
        )


def params_from_args(args: argparse.Namespace) -> SegmentationParams:
    return SegmentationParams(
        **{item.name: getattr(args, item.name) for item in fields(SegmentationParams)}
    )


def main(args: argparse.Namespace) -> dict[str, Any]:
    segmenter = proposed_segmenter(params_from_args(args))
    scores = evaluate_dataset(args.data, segmenter, args.overlays, args.limit)
    summary = summarise(scores)
    print(format_table(summary))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return summary
