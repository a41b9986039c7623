"""The paired table of two versions on the same cells, and the exact McNemar test."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from mlworker.paired import mcnemar_p, paired_table


def one_hot(predicted: list[int], n_classes: int = 3) -> np.ndarray:
    return np.eye(n_classes)[predicted]


def test_the_table_counts_hits_and_discordant_cells_per_class_and_overall() -> None:
    labels = [0, 0, 0, 0, 1, 1, 2]
    active = one_hot([0, 0, 1, 2, 1, 0, 2])  # right on cells 0, 1, 4, 6
    candidate = one_hot([0, 1, 0, 2, 1, 1, 0])  # right on cells 0, 2, 4, 5
    table = paired_table(labels, active, candidate, codes=["A", "B", "C"])
    assert table["per_class"]["A"] == {
        "n": 4,
        "active_hits": 2,
        "candidate_hits": 2,
        "active_only": 1,  # cell 1
        "candidate_only": 1,  # cell 2
    }
    assert table["per_class"]["B"] == {
        "n": 2,
        "active_hits": 1,
        "candidate_hits": 2,
        "active_only": 0,
        "candidate_only": 1,
    }
    assert table["per_class"]["C"]["active_only"] == 1
    assert {k: table[k] for k in ("n", "active_hits", "candidate_hits")} == {
        "n": 7,
        "active_hits": 4,
        "candidate_hits": 4,
    }
    assert table["active_only"] == 2 and table["candidate_only"] == 2


def test_a_class_without_cells_is_listed_only_when_asked() -> None:
    labels = [0, 0]
    probs = one_hot([0, 0])
    assert set(paired_table(labels, probs, probs, codes=["A", "B", "C"])["per_class"]) == {"A"}
    table = paired_table(labels, probs, probs, codes=["A", "B", "C"], include=["C"])
    assert table["per_class"]["C"] == {
        "n": 0,
        "active_hits": 0,
        "candidate_hits": 0,
        "active_only": 0,
        "candidate_only": 0,
    }


def test_scores_of_different_cells_are_refused() -> None:
    with pytest.raises(ValueError, match="same cells"):
        paired_table([0, 1], one_hot([0, 1]), one_hot([0, 1, 1]), codes=["A", "B", "C"])


@pytest.mark.parametrize(("active_only", "candidate_only"), [(5, 0), (7, 2), (3, 3), (0, 4)])
def test_mcnemar_is_the_one_sided_exact_binomial_test(
    active_only: int, candidate_only: int
) -> None:
    expected = binomtest(active_only, active_only + candidate_only, 0.5, alternative="greater")
    assert mcnemar_p(active_only, candidate_only) == pytest.approx(expected.pvalue)


def test_mcnemar_without_discordant_cells_finds_no_difference() -> None:
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(5, 0) == pytest.approx(1 / 32)  # the fewest flips that reach p < 0.05
    assert mcnemar_p(4, 0) > 0.05
