"""``python -m mlworker.train --data DIR [--data DIR ...] --out DIR [flags]``.

Discovers the labelled images, leaves out copies filed under two classes, caps each class,
splits train/validation (stratified; by patient where a manifest names patients), runs
``fit`` and writes into ``--out``:

- ``metrics.json``: the evaluation JSON on the validation split, per-source reports
  (``by_source``), per-stage ``history``, ``weak_classes``, ``calibration``, the data
  counts and the exact command;
- ``confusion_matrix.png``, ``reliability.png``, ``training_curves.png``;
- ``command.txt``;
- ``checkpoint.pt``: written last, under a temporary name then renamed, so a run that
  fails leaves none behind. ``resume.pt`` (the state after the last finished epoch) is
  kept until the run succeeds; ``--resume`` continues from it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlworker import taxonomy
from mlworker.data import Sample, discover_samples
from mlworker.evaluate import evaluation_report, write_plots
from mlworker.model import save_checkpoint
from mlworker.train.config import add_train_arguments, config_from_namespace
from mlworker.train.engine import TrainResult, fit, load_state
from mlworker.train.loop import evaluate_samples
from mlworker.train.splits import cap_per_class, class_counts, deduplicate, split_train_val_test

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
STATE_NAME = "resume.pt"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlworker.train",
        description="Train a WBC classifier with the reference paper's two-stage protocol",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data",
        action="append",
        required=True,
        help="class-per-folder tree (14-Diff folder names) or folder with "
        "manifest.csv; repeat to combine datasets",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        help="continue from a resume state (default: OUT/resume.pt)",
    )
    parser.add_argument(
        "--no-progress-bar",
        dest="progress_bar",
        action="store_false",
        help="no per-epoch progress bar",
    )
    return add_train_arguments(parser)


def command_line(args: argparse.Namespace) -> str:
    """The command that repeats this run exactly: every flag spelled out, defaults too."""
    words = ["python", "-m", "mlworker.train"]
    for action in get_args_parser()._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flag, value = action.option_strings[0], getattr(args, action.dest, None)
        if isinstance(action, argparse._StoreConstAction | argparse._StoreTrueAction):
            if value != action.default:
                words.append(flag)
        elif isinstance(action, argparse._AppendAction):
            for item in value or []:
                words += [flag, str(item)]
        elif value is not None:
            words += [flag, str(value)]
    return shlex.join(words)


def _source_name(root: Path, roots: Sequence[Path]) -> str:
    names = [r.name for r in roots]
    return root.name if names.count(root.name) == 1 else str(root)


def load_data(roots: Sequence[Path]) -> tuple[list[Sample], dict[str, str], dict[str, Any]]:
    """All samples, the source name of each path, and what discovery found."""
    samples: list[Sample] = []
    source_of: dict[str, str] = {}
    found: dict[str, Any] = {}
    for root in roots:
        name = _source_name(root, roots)
        discovered = discover_samples(root)
        found[name] = {
            "root": str(root),
            "images": len(discovered),
            "per_class": class_counts(discovered),
            "patients": len({s.patient for s in discovered if s.patient}),
        }
        for sample in discovered:
            source_of[str(sample.path)] = name
        samples.extend(discovered)
    return samples, source_of, found


def count_table(train: Sequence[Sample], val: Sequence[Sample]) -> str:
    tr, va = class_counts(train), class_counts(val)
    lines = [f"{'class':<6}{'train':>7}{'val':>7}"]
    for code in taxonomy.CODES:
        if code in tr or code in va:
            lines.append(f"{code:<6}{tr.get(code, 0):>7}{va.get(code, 0):>7}")
    lines.append(f"{'total':<6}{len(train):>7}{len(val):>7}")
    return "\n".join(lines)


def reports_by_source(result: TrainResult, source_of: dict[str, str]) -> dict[str, Any]:
    """The evaluation JSON restricted to the validation images of each ``--data``."""
    out: dict[str, Any] = {}
    sources = [source_of.get(str(s.path), "?") for s in result.val_samples]
    for name in dict.fromkeys(sources):
        rows = np.array([src == name for src in sources])
        out[name] = evaluation_report(result.val_labels[rows], result.val_probabilities[rows])
    return out


def test_reports(
    result: TrainResult, test: Sequence[Sample], source_of: dict[str, str]
) -> dict[str, Any]:
    """The final checkpoint (with its own TTA and temperature, as the product scores) on the
    held-out test images: all of them, then each ``--data`` source on its own."""
    by_source: dict[str, list[Sample]] = {}
    for s in test:
        by_source.setdefault(source_of.get(str(s.path), "?"), []).append(s)
    return {
        "n": len(test),
        "patients": len({s.patient for s in test if s.patient}),
        "all": evaluate_samples(result.checkpoint, test),
        "by_source": {
            n: evaluate_samples(result.checkpoint, rows) for n, rows in by_source.items()
        },
    }


def _gap(val: float | None, test: float | None) -> float | None:
    """Validation minus test: how optimistic the figure the decisions were taken on is."""
    return None if val is None or test is None else round(val - test, 4)


def write_training_curves(history: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(1, len(history) + 1))

    def validated(key: str) -> tuple[list[int], list[float]]:  # --val-every skips epochs
        points = [(i, h[key]) for i, h in zip(x, history, strict=True) if h[key] is not None]
        return [i for i, _ in points], [v for _, v in points]

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), constrained_layout=True)
    for ax, key, title in ((axes[0], "loss", "Loss"), (axes[1], "accuracy", "Accuracy")):
        ax.plot(x, [h[f"train_{key}"] for h in history], "o-", label="train (augmented)")
        ax.plot(*validated(f"val_{key}"), "s-", label="validation")
        if key == "accuracy":
            ax.plot(*validated("val_balanced_accuracy"), "^--", label="validation balanced")
        previous = None
        for i, h in enumerate(history, start=1):
            if h["stage"] != previous:
                ax.axvline(i - 0.5, color="grey", lw=0.8, ls=":")
                ax.text(i - 0.4, ax.get_ylim()[1], h["stage"], va="top", fontsize=8, color="grey")
                previous = h["stage"]
        ax.set_title(title)
        ax.set_xlabel("epoch (all stages)")
        ax.legend(loc="best", fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def main(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_NAME
    stale = out / CHECKPOINT_NAME
    if stale.exists():
        logger.info("removing %s from an earlier run; it is rewritten only on success", stale)
        stale.unlink()
    config = config_from_namespace(args)
    command = command_line(args)

    roots = [Path(d) for d in args.data]
    samples, source_of, found = load_data(roots)
    dedup = deduplicate(samples)
    capped = cap_per_class(dedup.kept, config.class_cap, config.seed)
    train, val, test = split_train_val_test(
        capped, config.val_fraction, config.test_fraction, config.seed
    )
    sides = [{s.patient for s in side if s.patient} for side in (train, val, test)]
    leaked = (sides[0] & sides[1]) | (sides[0] & sides[2]) | (sides[1] & sides[2])
    assert not leaked, f"patients on two sides: {sorted(leaked)}"
    print(
        f"{len(samples)} images found; {dedup.duplicates} duplicate copies and "
        f"{len(dedup.conflicting)} images filed under two classes left out; "
        f"{len(dedup.kept) - len(capped)} over the class cap of {config.class_cap}"
    )
    print(count_table(train, val), flush=True)

    resume_state = None
    if args.resume:
        resume_path = state_path if args.resume == "auto" else Path(args.resume)
        resume_state = load_state(resume_path)
    result = fit(
        train,
        val,
        config,
        state_path=state_path,
        resume_state=resume_state,
        progress_bar=args.progress_bar,
        source_of=source_of,
    )

    metrics = dict(result.metrics)
    metrics["by_source"] = reports_by_source(result, source_of)
    if test:
        # Reported only: nothing above looked at these images.
        metrics["test"] = test_reports(result, test, source_of)
        metrics["test"]["gap_balanced_accuracy"] = _gap(
            metrics.get("balanced_accuracy"), metrics["test"]["all"].get("balanced_accuracy")
        )
    metrics["data"] = {
        "sources": found,
        "found": len(samples),
        **dedup.as_dict(),
        "over_class_cap": len(dedup.kept) - len(capped),
        "train": len(train),
        "val": len(val),
        "train_per_class": class_counts(train),
        "val_per_class": class_counts(val),
        "test": len(test),
        "test_per_class": class_counts(test),
        "val_patients": len({s.patient for s in val if s.patient}),
        "test_patients": len({s.patient for s in test if s.patient}),
        "train_patients": len({s.patient for s in train if s.patient}),
    }
    metrics["command"] = command
    metrics["config"] = config.as_dict()
    metrics["wall_time_s"] = round(time.monotonic() - started, 1)
    result.checkpoint["metrics"] = metrics

    (out / "metrics.json").write_text(json.dumps(_json_safe(metrics), indent=1))
    (out / "command.txt").write_text(command + "\n")
    plots = write_plots(metrics, result.val_labels, result.val_probabilities, out)
    plots[0].replace(out / "confusion_matrix.png")
    write_training_curves(result.history, out / "training_curves.png")
    save_checkpoint(result.checkpoint, out / CHECKPOINT_NAME)  # last: it means "succeeded"
    state_path.unlink(missing_ok=True)
    summary = {k: metrics[k] for k in ("balanced_accuracy", "normal_tpr", "abnormal_tpr", "ece")}
    print(
        json.dumps(
            _json_safe(
                {
                    **summary,
                    "by_source": {
                        n: {k: r[k] for k in ("balanced_accuracy", "normal_tpr", "abnormal_tpr")}
                        for n, r in metrics["by_source"].items()
                    },
                    "weak_classes": {
                        k: metrics["weak_classes"].get(k) for k in ("before", "after", "kept")
                    },
                    "test": {
                        n: {
                            k: r.get(k) for k in ("balanced_accuracy", "normal_tpr", "abnormal_tpr")
                        }
                        for n, r in metrics.get("test", {}).get("by_source", {}).items()
                    }
                    | (
                        {
                            "all": {
                                k: metrics["test"]["all"].get(k)
                                for k in ("balanced_accuracy", "normal_tpr", "abnormal_tpr")
                            }
                        }
                        if "test" in metrics
                        else {}
                    ),
                    "wall_time_s": metrics["wall_time_s"],
                }
            ),
            indent=1,
        )
    )
    return metrics
