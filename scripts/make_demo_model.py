"""Train the demo's model and write the files ``load_demo`` registers (``demo/model/``).

``python scripts/make_demo_model.py`` (or ``make demo-model``) reruns it end to end:

1. The training pool is the PBC dataset (``--pbc``, 3,600 images, CC BY 4.0) **minus the
   demo's own 108 cells** (``demo/pbc`` and ``demo/smear``), left out by SHA-256 of their
   contents, not by name: the demo scores those cells, so the model must never have seen
   them. The pool is written as a ``manifest.csv`` (absolute paths, the dataset's own
   labels) under ``--work``; the dataset is not copied.
2. ``python -m mlworker.train`` with ``DEMO_RECIPE``: EfficientNet-Lite0 from the ImageNet
   weights installed with its package, the head, then the last stage + head. The split is
   train / validation / test, stratified by class; every choice (recipe, epochs, the
   weight average, calibration) was taken on the validation split, and the test split is
   only reported.
3. ``mlworker.demo_model.write_demo_model``: only what differs from the package's weights
   (the last stage and the head, fp16) goes into ``demo/model/``, with the held-out
   figures in its metrics.

Extra arguments after ``--`` go to ``mlworker.train`` (they override the recipe), e.g. a
shorter probe: ``python scripts/make_demo_model.py --work runs/probe --no-write -- --crop 0.6``.
Training runs on one thread by default (``--threads 1``): on a busy two-core machine it is
faster than two oversubscribed ones (mlworker/training.md).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from mlworker.data import MANIFEST_NAME, Sample, discover_samples, list_images  # noqa: E402
from mlworker.demo_model import (  # noqa: E402
    DEFAULT_DEMO_MODEL_DIR,
    load_demo_checkpoint,
    write_demo_model,
)
from mlworker.metrics import classification_metrics  # noqa: E402
from mlworker.model import load_checkpoint  # noqa: E402
from mlworker.train import cli, evaluate_samples  # noqa: E402
from mlworker.train.config import config_from_namespace  # noqa: E402
from mlworker.train.splits import cap_per_class, deduplicate, split_train_val_test  # noqa: E402

DEMO_CELL_DIRS: tuple[Path, ...] = (ROOT / "demo" / "pbc", ROOT / "demo" / "smear")
# Chosen on the validation split (see demo/model/README.md for the probes and figures).
DEMO_RECIPE: list[str] = [
    "--arch", "efficientnet_lite0", "--weights", "imagenet",
    "--image-size", "112", "--crop", "0.6",
    "--epochs-head", "1", "--epochs-finetune", "10", "--finetune-scope", "layer4",
    "--epochs-weak", "0", "--optimizer", "adamw", "--lr", "0.001", "--weight-decay", "0.01",
    "--lr-schedule", "cosine", "--ema-decay", "0.985", "--batch-size", "32", "--tta", "flips",
    "--val-fraction", "0.15", "--test-fraction", "0.15",
    "--precision", "fp32", "--threads", "1", "--workers", "1", "--seed", "0",
]  # fmt: skip


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def demo_cell_hashes(folders: Iterable[Path] = DEMO_CELL_DIRS) -> set[str]:
    """Content hashes of every image the demo bundles (labelled or not)."""
    return {sha256_of(p) for folder in folders for p in list_images(folder)}


def write_training_manifest(pbc: Path, work: Path, excluded: set[str]) -> tuple[Path, int]:
    """A manifest of ``pbc``'s labelled images whose contents are not in ``excluded``.

    Returns the folder holding it and how many images were left out.
    """
    data_dir = work / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    left_out = 0
    rows: list[tuple[str, str, str]] = []
    for sample in discover_samples(pbc):
        if sha256_of(sample.path) in excluded:
            left_out += 1
            continue
        assert sample.code is not None  # a labelled source
        rows.append((str(sample.path.resolve()), sample.code, sample.source_label or ""))
    with (data_dir / MANIFEST_NAME).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "diff14", "source_label"])
        writer.writerows(rows)
    return data_dir, left_out


def held_out_test_samples(data_dir: Path, recipe: argparse.Namespace) -> list[Sample]:
    """The test split ``mlworker.train`` held out, recomputed with its own functions (the
    split is a pure function of the images, the fractions and the seed)."""
    config = config_from_namespace(recipe)
    samples, _, _ = cli.load_data([data_dir])
    capped = cap_per_class(deduplicate(samples).kept, config.class_cap, config.seed)
    _, _, test = split_train_val_test(
        capped, config.val_fraction, config.test_fraction, config.seed
    )
    return test


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """An evaluation JSON with the 95 % intervals (per class and of the means) added:
    ``evaluation_report`` keeps the confusion matrix, from which they follow."""
    return {**report, **classification_metrics(np.asarray(report["confusion"]))}


def describe(report: dict[str, Any]) -> str:
    per_class = {c: r["n"] for c, r in report["per_class"].items() if r["n"]}
    sizes = sorted(set(per_class.values()))
    each = f"{sizes[0]} per class" if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]} per class"
    return f"n={report['n_images']} ({each}, {len(per_class)} classes)"


def version_metrics(
    trained: dict[str, Any], test: dict[str, Any], demo_cells: dict[str, Any]
) -> dict[str, Any]:
    """What the registered version shows: the held-out test figures of the shipped
    (fp16) model at the top level, where every version keeps its figures, and beside them
    where they come from and the validation figures the choices were taken on."""
    test_summary = summary(test)
    return {
        **test_summary,
        "n": test_summary["n_images"],
        "note": f"PBC test split, {describe(test_summary)}, never used for a decision; "
        "the demo's own cells were left out of training, validation and test",
        "source": "PBC test split (held out before training; figures of the shipped fp16 delta)",
        "validation": {
            k: summary(trained)[k]
            for k in ("n_images", "balanced_accuracy", "balanced_accuracy_ci95", "accuracy")
        },
        "test_fp32_checkpoint": {
            k: trained.get("test", {}).get("all", {}).get(k)
            for k in ("n_images", "balanced_accuracy", "accuracy")
        },
        "demo_cells": {
            "note": f"demo/pbc, {describe(summary(demo_cells))}: never trained on, the demo's "
            "fixed evaluation set",
            **{
                k: summary(demo_cells)[k]
                for k in ("n_images", "accuracy", "balanced_accuracy", "balanced_accuracy_ci95")
            },
        },
        "history": [
            {k: row.get(k) for k in ("stage", "epoch", "train_loss", "val_balanced_accuracy")}
            for row in trained.get("history", [])
        ],
        "data": {
            k: trained.get("data", {}).get(k)
            for k in ("train", "val", "test", "train_per_class", "val_per_class", "test_per_class")
        },
        "command": trained.get("command"),
        "wall_time_s": trained.get("wall_time_s"),
    }


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train the demo model on PBC cells the demo does not bundle and write "
        "its delta to demo/model/"
    )
    parser.add_argument(
        "--pbc",
        type=Path,
        default=ROOT.parent / "shared" / "data" / "pbc",
        help="the PBC dataset (class folders or manifest.csv)",
    )
    parser.add_argument(
        "--work", type=Path, default=ROOT / "runs" / "demo-model", help="training output folder"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_DEMO_MODEL_DIR, help="where the demo model goes"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="train only (a probe): leave --out alone"
    )
    parser.add_argument(
        "--package-only",
        action="store_true",
        help="skip training: package the checkpoint an earlier run left in --work",
    )
    parser.add_argument("train_args", nargs="*", help="after --: flags for mlworker.train")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    excluded = demo_cell_hashes()
    data_dir, left_out = write_training_manifest(args.pbc, args.work, excluded)
    print(f"{len(excluded)} demo cells; {left_out} of them found in {args.pbc} and left out")
    train_argv = ["--data", str(data_dir), "--out", str(args.work), "--no-progress-bar"]
    recipe = cli.get_args_parser().parse_args(train_argv + DEMO_RECIPE + args.train_args)
    if not args.package_only:
        cli.main(recipe)
    if args.no_write:
        return 0
    checkpoint = load_checkpoint(args.work / cli.CHECKPOINT_NAME)
    trained = dict(checkpoint["metrics"])
    provenance = {
        "training_pool": f"PBC ({args.pbc.name}) minus the demo's {len(excluded)} cells, "
        f"left out by SHA-256 ({left_out} found)",
        "dataset": "PBC (Acevedo et al. 2020, Data in Brief 30:105474), CC BY 4.0",
        "script": "scripts/make_demo_model.py",
    }
    # Written once to measure what ships (fp16 entries), then again with those figures.
    write_demo_model(checkpoint, args.out, metrics={}, provenance=provenance)
    shipped = load_demo_checkpoint(args.out)
    test = held_out_test_samples(data_dir, recipe)
    if len(test) != trained.get("data", {}).get("test"):
        raise SystemExit(f"recomputed test split has {len(test)} images, training had another")
    demo_cells = discover_samples(DEMO_CELL_DIRS[0])
    metrics = version_metrics(
        trained, evaluate_samples(shipped, test), evaluate_samples(shipped, demo_cells)
    )
    written = write_demo_model(checkpoint, args.out, metrics=metrics, provenance=provenance)
    print(json.dumps({p.name: p.stat().st_size for p in written}, indent=1))
    print(metrics["note"])
    for key in ("balanced_accuracy", "balanced_accuracy_ci95"):
        print(f"test {key}: {metrics[key]}")
    print(f"demo cells: {metrics['demo_cells']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
