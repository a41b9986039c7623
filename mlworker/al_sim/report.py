"""Outputs of a simulation: curves.csv, summary.json, details.json, learning_curves.png."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlworker.al_sim.simulate import CurvePoint

CURVE_COLUMNS = ("strategy", "repeat", "round", "labels", "balanced_accuracy", "abnormal_tpr")


def write_curves(points: Sequence[CurvePoint], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CURVE_COLUMNS)
        for p in points:
            writer.writerow(
                [
                    p.strategy,
                    p.repeat,
                    p.round,
                    p.labels,
                    f"{p.balanced_accuracy:.6f}",
                    "" if p.abnormal_tpr is None else f"{p.abnormal_tpr:.6f}",
                ]
            )


def curve_table(
    points: Sequence[CurvePoint], strategy: str, metric: str = "balanced_accuracy"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, mean, std over repeats) per round; rounds every repeat reached."""
    rows = [p for p in points if p.strategy == strategy]
    repeats = sorted({p.repeat for p in rows})
    by_repeat = {
        r: sorted((p for p in rows if p.repeat == r), key=lambda p: p.round) for r in repeats
    }
    n = min(len(v) for v in by_repeat.values())
    values = np.array(
        [
            [np.nan if getattr(p, metric) is None else getattr(p, metric) for p in by_repeat[r][:n]]
            for r in repeats
        ]
    )
    labels = np.array([np.mean([by_repeat[r][i].labels for r in repeats]) for i in range(n)])
    std = values.std(axis=0, ddof=1) if len(repeats) > 1 else np.zeros(n)
    return labels, values.mean(axis=0), std


def _first_reach(labels: np.ndarray, mean: np.ndarray, target: float) -> int | None:
    reached = np.flatnonzero(mean >= target - 1e-12)
    return round(float(labels[reached[0]])) if len(reached) else None


def _auc(labels: np.ndarray, mean: np.ndarray) -> float:
    """Area under the curve over the labels axis, divided by its width: 0..1 for BA."""
    if len(labels) < 2 or labels[-1] == labels[0]:
        return float(mean[-1])
    area = float(np.sum((mean[1:] + mean[:-1]) / 2 * np.diff(labels)))
    return area / float(labels[-1] - labels[0])


def summarise(
    points: Sequence[CurvePoint], strategies: Sequence[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """summary.json (exactly the issue's keys) and details.json (the rest).

    ``labels_to_reach_random_final`` reads the mean curve over repeats (every repeat
    spends the same labels per round): the first round whose mean balanced accuracy is at
    least random's mean final value.
    """
    tables = {s: curve_table(points, s) for s in strategies}
    reference = "random" if "random" in tables else strategies[0]
    _, ref_mean, _ = tables[reference]
    budget = round(float(max(t[0][-1] for t in tables.values())))
    target = float(ref_mean[-1])
    summary: dict[str, Any] = {
        "budget": budget,
        "random_final_balanced_accuracy": round(target, 4),
        "strategies": {},
    }
    details: dict[str, Any] = {"reference": reference, "strategies": {}}
    for s, (labels, mean, std) in tables.items():
        summary["strategies"][s] = {
            "labels_to_reach_random_final": _first_reach(labels, mean, target),
            "final_balanced_accuracy": round(float(mean[-1]), 4),
            "auc": round(_auc(labels, mean), 4),
        }
        _, ab_mean, _ = curve_table(points, s, "abnormal_tpr")
        n = min(len(mean), len(ref_mean))
        gap = mean[:n] - ref_mean[:n]  # per round, vs the reference strategy
        details["strategies"][s] = {
            "labels": labels.round().astype(int).tolist(),
            "balanced_accuracy_mean": mean.round(4).tolist(),
            "balanced_accuracy_std": std.round(4).tolist(),
            "abnormal_tpr_mean": [None if math.isnan(v) else round(float(v), 4) for v in ab_mean],
            "gap_to_random": gap.round(4).tolist(),
            "worst_gap_minus_spread": round(float((gap + std[:n]).min()), 4),
            "never_worse_than_random_beyond_spread": bool((gap >= -std[:n] - 1e-12).all()),
        }
    reach = summary["strategies"].get("default", {}).get("labels_to_reach_random_final")
    if "default" in tables and reference == "random":
        details["goal"] = {
            "default_labels_to_reach": reach,
            "half_budget": budget / 2,
            "reaches_with_half_the_labels": reach is not None and reach <= budget / 2,
            "never_worse_beyond_spread": details["strategies"]["default"][
                "never_worse_than_random_beyond_spread"
            ],
        }
    return summary, details


def plot_curves(
    points: Sequence[CurvePoint], strategies: Sequence[str], path: Path, title: str = ""
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    colours = plt.get_cmap("tab10")
    for ax, metric, name in (
        (axes[0], "balanced_accuracy", "balanced accuracy (test patients)"),
        (axes[1], "abnormal_tpr", "abnormal-group mean TPR"),
    ):
        for i, s in enumerate(strategies):
            labels, mean, std = curve_table(points, s, metric)
            style = {"linewidth": 2.5} if s in {"default", "random"} else {"linewidth": 1.2}
            ax.plot(labels, mean, label=s, color=colours(i), **style)
            ax.fill_between(labels, mean - std, mean + std, color=colours(i), alpha=0.15)
        if metric == "balanced_accuracy" and "random" in strategies:
            _, ref, _ = curve_table(points, "random", metric)
            ax.axhline(
                ref[-1], color="grey", linestyle="--", linewidth=1, label="random, whole budget"
            )
        ax.set_xlabel("labels used (seed included)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(data: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
