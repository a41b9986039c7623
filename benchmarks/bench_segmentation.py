"""Segmentation quality and speed on one core: our segmenter vs an Otsu baseline.

    .venv/bin/python benchmarks/bench_segmentation.py
    .venv/bin/python benchmarks/bench_segmentation.py --speed-images 400 --json runs/seg.json

For each wbcseg subset (expert masks) both methods are scored with the same evaluation
code as ``python -m mlworker.segmentation evaluate``. Speed is also measured on real
360x363 CellaVision exports (../shared/data/pbc), and the share of failed or low-quality
results on pbc and deepapl (no expert masks there) shows how the method carries over to
images it was not tuned on.

Baseline: Otsu threshold on the HSV saturation channel, the connected component nearest
the image centre, holes filled; its nucleus is a second Otsu split of saturation inside
that component.

Everything runs on one core: the BLAS/OpenMP thread counts are set to 1 before NumPy is
imported and the process is pinned to a single CPU.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402
from skimage.color import rgb2hsv  # noqa: E402
from skimage.filters import threshold_otsu  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mlworker.segmentation import SegmentationParams, read_image, segment_cell  # noqa: E402
from mlworker.segmentation.evaluate import evaluate_dataset, summarise  # noqa: E402

SHARED_DATA = Path(os.environ.get("WBC_SHARED_DATA", REPO.parent / "shared" / "data"))


def otsu_baseline(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    saturation = rgb2hsv(image)[..., 1]
    empty = np.zeros(saturation.shape, dtype=bool)
    if saturation.min() == saturation.max():
        return empty, empty
    components, n = ndi.label(saturation > threshold_otsu(saturation))
    if n == 0:
        return empty, empty
    centre = (np.array(saturation.shape) - 1) / 2.0
    # The component nearest the centre: smallest distance from the centre to any of its pixels.
    rows, cols = np.indices(saturation.shape)
    radial = np.hypot(rows - centre[0], cols - centre[1])
    nearest = ndi.minimum(radial, components, np.arange(1, n + 1))
    wbc = np.asarray(ndi.binary_fill_holes(components == int(np.argmin(nearest)) + 1))
    values = saturation[wbc]
    if values.size < 2 or values.min() == values.max():
        return wbc, empty
    return wbc, wbc & (saturation > threshold_otsu(values))


def pin_to_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned (no sched_setaffinity)"


def speed_and_failures(
    paths: list[Path], params: SegmentationParams
) -> tuple[list[float], list[float], Counter[str], list[float]]:
    ours_ms, baseline_ms, failures, quality = [], [], Counter[str](), []
    for path in paths:
        image = read_image(path)
        start = time.perf_counter()
        result = segment_cell(image, params)
        ours_ms.append((time.perf_counter() - start) * 1e3)
        start = time.perf_counter()
        otsu_baseline(image)
        baseline_ms.append((time.perf_counter() - start) * 1e3)
        quality.append(result.quality)
        if not result.ok:
            failures[result.reason] += 1
    return ours_ms, baseline_ms, failures, quality


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=SHARED_DATA, help="the shared reference data folder"
    )
    parser.add_argument(
        "--subsets",
        nargs="+",
        default=["tecom", "cellavision"],
        help="wbcseg subsets to evaluate against expert masks",
    )
    parser.add_argument(
        "--speed-images",
        type=int,
        default=300,
        help="pbc images (evenly spread over classes) timed for the 360x363 speed figure",
    )
    parser.add_argument(
        "--generalisation-images",
        type=int,
        default=300,
        help="deepapl images (evenly spread) checked for failures and low quality",
    )
    parser.add_argument("--json", type=Path, default=None, help="write all figures here")
    return parser


def spread(paths: list[Path], count: int) -> list[Path]:
    if count >= len(paths):
        return paths
    return [paths[i] for i in np.linspace(0, len(paths) - 1, count).round().astype(int)]


def main(args: argparse.Namespace) -> dict[str, object]:
    pinned = pin_to_one_core()
    params = SegmentationParams()
    print(f"# {platform.python_version()}, {os.cpu_count()} CPUs, {pinned}, {params}")
    report: dict[str, object] = {}
    header = (
        f"{'subset':<12}{'method':<9}{'n':>5}{'WBC Dice':>10}{'WBC IoU':>9}"
        f"{'Nuc Dice':>10}{'px err %':>10}{'SER %':>7}{'ms/img':>8}"
    )
    print(header)
    for subset in args.subsets:
        data_dir = args.data / "wbcseg" / subset
        for method, segmenter in (
            ("ours", lambda image: segment_cell(image, params)),
            ("otsu-S", otsu_baseline),
        ):
            summary = summarise(evaluate_dataset(data_dir, segmenter))
            report[f"{subset}/{method}"] = summary
            o = summary["overall"]
            print(
                f"{subset:<12}{method:<9}{summary['n_images']:>5}{o['wbc_dice']:>10.3f}"
                f"{o['wbc_iou']:>9.3f}{o['nucleus_dice']:>10.3f}{100 * o['pixel_error']:>10.2f}"
                f"{100 * o['ser']:>7.1f}{o['ms_per_image']:>8.1f}"
            )

    for name, count in (("pbc", args.speed_images), ("deepapl", args.generalisation_images)):
        paths = spread(sorted((args.data / name).glob("*/*.jpg")), count)
        if not paths:
            continue
        ours, baseline, failures, quality = speed_and_failures(paths, params)
        q = np.asarray(quality)
        figures = {
            "n_images": len(paths),
            "ours_ms_mean": statistics.fmean(ours),
            "ours_ms_median": statistics.median(ours),
            "baseline_ms_mean": statistics.fmean(baseline),
            "baseline_ms_median": statistics.median(baseline),
            "failed": dict(failures),
            "quality_median": float(np.median(q)),
            "quality_below_0.5": int((q < 0.5).sum()),
        }
        report[name] = figures
        print(
            f"{name}: {len(paths)} images; ours {figures['ours_ms_mean']:.1f} ms mean / "
            f"{figures['ours_ms_median']:.1f} median, otsu-S {figures['baseline_ms_mean']:.1f} / "
            f"{figures['baseline_ms_median']:.1f}; failed {sum(failures.values())} "
            f"{dict(failures)}; quality median {figures['quality_median']:.2f}, "
            f"{figures['quality_below_0.5']} below 0.5"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
