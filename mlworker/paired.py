"""Two model versions scored on the same labelled cells, compared cell by cell.

Two TPRs measured on the same cells are not independent samples: most cells are right (or
wrong) for both versions, and only the discordant ones, right for one version and wrong for
the other, say which version is better. The paired table keeps those counts, per class and
overall, so the promotion guard (annotation/rules.py) can ask how likely a drop is to be
noise with an exact McNemar test instead of comparing two rates that may stand on two cells.

Plain numpy (and scipy for the test); no torch, no Django: callers score the cells however
they like and pass labels plus the two probability arrays, rows in the same cell order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from mlworker import taxonomy


def _counts(active_right: np.ndarray, candidate_right: np.ndarray) -> dict[str, int]:
    return {
        "n": len(active_right),
        "active_hits": int(active_right.sum()),
        "candidate_hits": int(candidate_right.sum()),
        # b and c of McNemar's table: the only cells where the two versions differ.
        "active_only": int((active_right & ~candidate_right).sum()),
        "candidate_only": int((candidate_right & ~active_right).sum()),
    }


def paired_table(
    labels: Sequence[int] | np.ndarray,
    active_probabilities: np.ndarray,
    candidate_probabilities: np.ndarray,
    codes: Sequence[str] = taxonomy.CODES,
    include: Iterable[str] = (),
) -> dict[str, Any]:
    """Hits and discordant pairs of two versions on the same cells, overall and per class.

    ``labels`` (N,) are true class indices into ``codes``; both probability arrays are
    (N, C) in the same row order (row i is the same cell for both). A version is right on a
    cell when its top class is the true one. ``per_class`` has a row for every class with a
    cell here, and for each code in ``include`` even without one (n = 0), so a caller can
    show "this class has labels but no evaluation cell" rather than leave it out silently.
    """
    y = np.asarray(labels, dtype=np.int64)
    active = np.asarray(active_probabilities)
    candidate = np.asarray(candidate_probabilities)
    if active.shape != candidate.shape or active.shape[:1] != y.shape:
        raise ValueError(
            f"paired scores need the same cells: labels {y.shape}, active {active.shape}, "
            f"candidate {candidate.shape}"
        )
    if len(y):
        active_right = active.argmax(axis=1) == y
        candidate_right = candidate.argmax(axis=1) == y
    else:
        active_right = candidate_right = np.zeros(0, dtype=bool)
    wanted = set(include)
    per_class = {}
    for index, code in enumerate(codes):
        rows = y == index
        if rows.any() or code in wanted:
            per_class[code] = _counts(active_right[rows], candidate_right[rows])
    return {**_counts(active_right, candidate_right), "per_class": per_class}


def mcnemar_p(active_only: int, candidate_only: int) -> float:
    """One-sided exact McNemar p-value that the candidate is worse than the active version.

    Under "no difference" each discordant cell is a fair coin between the two versions;
    this is the chance of at least ``active_only`` of the ``active_only + candidate_only``
    discordant cells going the active version's way. No discordant cells: 1.0 (nothing
    suggests a difference).
    """
    discordant = active_only + candidate_only
    if discordant == 0:
        return 1.0
    from scipy.stats import binomtest  # scipy.stats takes ~0.5 s to import: only when used

    return float(binomtest(active_only, discordant, 0.5, alternative="greater").pvalue)
