"""The promotion guard on paired figures: a drop blocks only when it is unlikely to be
noise and enough cells stand behind it. Plain objects, no database."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from annotation.rules import MIN_CLASS_N_TO_JUDGE, guard_comparison

ACTIVE_ID = 7


def _row(n: int, active_hits: int, candidate_hits: int, active_only: int) -> dict[str, int]:
    """A paired row; the discordant cells follow from the hits and ``active_only``."""
    candidate_only = candidate_hits - active_hits + active_only
    assert 0 <= candidate_only <= n
    return {
        "n": n,
        "active_hits": active_hits,
        "candidate_hits": candidate_hits,
        "active_only": active_only,
        "candidate_only": candidate_only,
    }


def _pair(
    per_class: dict[str, dict[str, int]],
    *,
    candidate_ba: float,
    active_ba: float,
    against: int = ACTIVE_ID,
) -> tuple[Any, Any]:
    overall = {
        key: sum(row[key] for row in per_class.values())
        for key in ("n", "active_hits", "candidate_hits", "active_only", "candidate_only")
    }
    tpr = {
        code: (row["candidate_hits"] / row["n"] if row["n"] else None)
        for code, row in per_class.items()
    }
    active_tpr = {
        code: (row["active_hits"] / row["n"] if row["n"] else None)
        for code, row in per_class.items()
    }
    active = SimpleNamespace(pk=ACTIVE_ID, metrics={"balanced_accuracy": active_ba})
    candidate = SimpleNamespace(
        pk=8,
        metrics={
            "balanced_accuracy": candidate_ba,
            "per_class": {code: {"tpr": t} for code, t in tpr.items()},
            "active_on_evaluation_set": {
                "balanced_accuracy": active_ba,
                "per_class": {code: {"tpr": t} for code, t in active_tpr.items()},
            },
            "paired_on_evaluation_set": {
                **overall,
                "per_class": per_class,
                "active_version_id": against,
            },
        },
    )
    return candidate, active


def test_a_class_going_from_2_of_2_to_0_of_2_cannot_be_judged_and_does_not_block() -> None:
    # The demo's case: the candidate is better overall, one tiny class lost both its cells.
    candidate, active = _pair(
        {"NE": _row(40, 30, 36, 0), "AR": _row(2, 2, 0, 2), "BL": _row(0, 0, 0, 0)},
        candidate_ba=0.45,  # balanced accuracy averages the tiny class in: (0.9 + 0) / 2
        active_ba=0.875,
    )
    guard = guard_comparison(candidate, active)
    assert guard["passes"], guard["reasons"]
    assert guard["basis"] == "paired"
    assert guard["unjudged"] == [{"code": "AR", "n": 2}, {"code": "BL", "n": 0}]
    assert guard["cannot_judge"] == "cannot judge: AR (n=2), BL (n=0)"
    assert guard["class_drops"] == {}
    # Under the old rule the same TPRs would have blocked it.
    del candidate.metrics["paired_on_evaluation_set"]
    old = guard_comparison(candidate, active)
    assert not old["passes"] and "AR TPR drops from 1.00 to 0.00" in old["reasons"]


def test_14_of_20_to_9_of_20_with_enough_discordant_cells_blocks_with_counts_and_p() -> None:
    candidate, active = _pair(
        {"NE": _row(60, 50, 52, 1), "PR": _row(20, 14, 9, 5)},
        candidate_ba=0.66,
        active_ba=0.77,
    )
    guard = guard_comparison(candidate, active)
    assert not guard["passes"]
    assert "PR TPR 14/20 -> 9/20, p = 0.03" in guard["reasons"]
    assert set(guard["class_drops"]) == {"PR"}
    pr = next(row for row in guard["per_class"] if row["code"] == "PR")
    assert pr["judged"] and pr["blocks"] and pr["p"] < 0.05
    ne = next(row for row in guard["per_class"] if row["code"] == "NE")
    assert ne["judged"] and not ne["blocks"]


def test_the_same_drop_with_discordant_cells_both_ways_is_noise() -> None:
    # 14/20 -> 12/20, but 6 cells went one way and 4 the other: p = 0.38.
    candidate, active = _pair(
        {"NE": _row(60, 50, 52, 1), "PR": _row(20, 14, 12, 6)},
        candidate_ba=0.73,
        active_ba=0.77,
    )
    guard = guard_comparison(candidate, active)
    assert guard["passes"], guard["reasons"]
    assert guard["balanced_accuracy"]["paired"]["p"] > 0.05  # the overall drop is noise too


def test_a_balanced_accuracy_drop_blocks_only_when_worse_across_the_cells() -> None:
    rows = {code: _row(30, 27, 25, 2) for code in ("NE", "LY", "MO", "EO")}  # each: 2 flips
    candidate, active = _pair(rows, candidate_ba=0.83, active_ba=0.90)
    guard = guard_comparison(candidate, active)
    assert not guard["passes"] and guard["class_drops"] == {}  # no single class is enough
    assert guard["reasons"][0].startswith("balanced accuracy drops from 0.900 to 0.830")
    assert "all cells 108/120 -> 100/120, p = 0.004" in guard["reasons"][0]


def test_paired_figures_against_another_version_fall_back_to_the_old_rule() -> None:
    candidate, active = _pair(
        {"NE": _row(40, 30, 36, 0), "AR": _row(2, 2, 0, 2)},
        candidate_ba=0.9,
        active_ba=0.8,
        against=ACTIVE_ID + 100,
    )
    guard = guard_comparison(candidate, active)
    assert guard["basis"] == "tpr" and not guard["passes"]
    assert guard["reasons"] == ["AR TPR drops from 1.00 to 0.00"]


def test_the_minimum_n_is_a_line_the_guard_draws() -> None:
    n = MIN_CLASS_N_TO_JUDGE
    candidate, active = _pair({"NE": _row(n, n, 0, n)}, candidate_ba=0.0, active_ba=1.0)
    assert not guard_comparison(candidate, active)["passes"]
    # A class below the line never blocks by itself ...
    candidate, active = _pair(
        {"NE": _row(n - 1, n - 1, 0, n - 1), "LY": _row(n, 0, n, 0)},
        candidate_ba=0.5,
        active_ba=0.5,
    )
    guard = guard_comparison(candidate, active)
    assert guard["passes"] and guard["unjudged"] == [{"code": "NE", "n": n - 1}]
    # ... but an evaluation set below it in all judges nothing, a collapse included: it
    # blocks, and an admin decides (force).
    candidate, active = _pair({"NE": _row(n - 1, n - 1, 0, n - 1)}, candidate_ba=0.0, active_ba=1.0)
    guard = guard_comparison(candidate, active)
    assert not guard["passes"] and guard["unjudged"] == [{"code": "NE", "n": n - 1}]
    assert guard["reasons"] == [
        f"the evaluation set has {n - 1} cells, too few to judge (at least {n})"
    ]
