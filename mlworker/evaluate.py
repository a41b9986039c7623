"""Evaluate a classifier checkpoint on a labelled folder.

``python -m mlworker.evaluate --checkpoint CKPT --data DIR [--json OUT] [--plots DIR]``

``DIR`` is a class-per-folder tree named by 14-Diff codes or a folder with
``manifest.csv``. The JSON report has ``n_images, accuracy, balanced_accuracy, macro_f1,
normal_tpr, abnormal_tpr, ece, per_class {CODE: {n, tpr, precision}}, confusion`` (see
mlworker/metrics.py for definitions; undefined values are ``null``), plus
``n_unreadable`` and the checkpoint's temperature. ``--plots`` writes
``confusion.png`` (counts and row-normalised) and ``reliability.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlworker import taxonomy
from mlworker.calibration import ECE_BINS, expected_calibration_error, reliability_bins
from mlworker.data import discover_samples
from mlworker.device import PRECISIONS, choose_runtime
from mlworker.metrics import classification_metrics, confusion_matrix
from mlworker.score import LabelledScores, Scorer, score_labelled

logger = logging.getLogger(__name__)


def evaluation_report(
    labels: Sequence[int] | np.ndarray,
    probabilities: np.ndarray,
    codes: Sequence[str] = taxonomy.CODES,
) -> dict[str, Any]:
    """Metrics for calibrated probabilities (N, C) against true class indices (N,)."""
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = probabilities.argmax(axis=1) if len(labels) else np.zeros(0, dtype=np.int64)
    report = classification_metrics(confusion_matrix(labels, predicted, len(codes)), codes)
    report["ece"] = expected_calibration_error(probabilities, labels) if len(labels) else None
    keys = ["n_images", "accuracy", "balanced_accuracy", "macro_f1", "normal_tpr"]
    keys += ["abnormal_tpr", "ece", "per_class", "confusion"]
    keys += ["balanced_accuracy_ci95", "normal_tpr_ci95", "abnormal_tpr_ci95"]
    return {k: report[k] for k in keys}


def write_plots(
    report: dict[str, Any],
    labels: np.ndarray,
    probabilities: np.ndarray,
    out_dir: str | Path,
    codes: Sequence[str] = taxonomy.CODES,
) -> list[Path]:
    """confusion.png (counts | row-normalised) and reliability.png; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cm = np.asarray(report["confusion"], dtype=np.float64)
    support = cm.sum(axis=1, keepdims=True)
    row_norm = np.divide(cm, support, out=np.full_like(cm, np.nan), where=support > 0)

    fig, axes = plt.subplots(1, 2, figsize=(16, 7), constrained_layout=True)
    for ax, matrix, title, fmt in (
        (axes[0], cm, "Counts", "{:.0f}"),
        (axes[1], row_norm, "Row-normalised (TPR on the diagonal)", "{:.2f}"),
    ):
        image = ax.imshow(np.nan_to_num(matrix), cmap="Blues")
        fig.colorbar(image, ax=ax, shrink=0.8)
        ax.set_title(title)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_xticks(range(len(codes)), codes, rotation=90)
        ax.set_yticks(range(len(codes)), codes)
        top = np.nanmax(matrix) if np.isfinite(matrix).any() else 1.0
        for i in range(len(codes)):
            for j in range(len(codes)):
                value = matrix[i, j]
                if np.isnan(value):
                    text = "n/a" if j == i else ""
                elif value == 0:
                    continue
                else:
                    text = fmt.format(value)
                color = "white" if np.isfinite(value) and value > top / 2 else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    confusion_path = out / "confusion.png"
    fig.savefig(confusion_path, dpi=120)
    plt.close(fig)

    bins = reliability_bins(probabilities, labels, ECE_BINS)
    fig, ax = plt.subplots(figsize=(6, 6), constrained_layout=True)
    width = 1.0 / ECE_BINS
    centres = [b.lower + width / 2 for b in bins]
    accuracy = [0.0 if b.count == 0 else b.accuracy for b in bins]
    confidence = [0.0 if b.count == 0 else b.confidence for b in bins]
    ax.bar(centres, accuracy, width=width, edgecolor="black", label="accuracy")
    ax.bar(centres, np.subtract(confidence, accuracy), bottom=accuracy, width=width,
           color="red", alpha=0.3, edgecolor="red", label="gap to confidence")  # fmt: skip
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ece = report.get("ece")
    ax.set_title(f"Reliability ({ECE_BINS} bins), ECE = {ece:.3f}" if ece is not None else "")
    ax.set_xlabel("confidence (max probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    reliability_path = out / "reliability.png"
    fig.savefig(reliability_path, dpi=120)
    plt.close(fig)
    return [confusion_path, reliability_path]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate a WBC classifier on labelled images")
    parser.add_argument("--checkpoint", required=True, help="classifier checkpoint (.pt)")
    parser.add_argument("--data", required=True, help="class-per-folder tree or manifest folder")
    parser.add_argument("--json", default=None, help="write the report to this file")
    parser.add_argument("--plots", default=None, help="write confusion/reliability PNGs here")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch")
    parser.add_argument("--workers", type=int, default=None, help="decode workers (auto)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: auto)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="autocast")
    return parser


def scored_report(scored: LabelledScores, scorer: Scorer) -> dict[str, Any]:
    """The evaluation JSON of scored labelled images, with how many were unreadable and
    the temperature their probabilities were calibrated with."""
    report = evaluation_report(scored.labels, scored.probabilities, scorer.codes)
    report["n_unreadable"] = len(scored.unreadable)
    report["temperature"] = scorer.temperature
    return report


def main(args: argparse.Namespace) -> dict[str, Any]:
    samples = discover_samples(args.data)
    scorer = Scorer(args.checkpoint, runtime=choose_runtime(args.device, args.precision))
    scored = score_labelled(scorer, samples, batch_size=args.batch_size, num_workers=args.workers)
    for source, error in scored.unreadable:
        logger.warning("unreadable, left out: %s (%s)", source, error)
    report = scored_report(scored, scorer)
    if args.plots:
        write_plots(report, scored.labels, scored.probabilities, args.plots, scorer.codes)
    text = json.dumps(report, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    else:
        print(text)
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main(get_args_parser().parse_args())
