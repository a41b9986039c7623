"""Active-learning strategies: which unlabelled cells a person should see first.

Pure numpy, shared by the product's review queue (annotation/services/routing.py) and
the label-efficiency simulation, so the simulation measures what the product does.

Every strategy takes the calibrated probabilities ``probs`` (n, k), optionally the pooled
features (n, d) and a boolean mask of weak classes (k,), and returns the order in which
to show the n cells (most useful first).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

STRATEGIES: tuple[str, ...] = (
    "random",
    "least_confidence",
    "margin",
    "entropy",
    "weak_class",
    "kcenter",
    "default",
)


def least_confidence(probs: np.ndarray) -> np.ndarray:
    return 1.0 - probs.max(axis=1)


def margin_uncertainty(probs: np.ndarray) -> np.ndarray:
    """1 - (p1 - p2): high when the top two classes are close."""
    top2 = np.sort(probs, axis=1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])


def entropy(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs, 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)


def weak_class_scores(probs: np.ndarray, weak: np.ndarray) -> np.ndarray:
    """Cells predicted as a weak class first, each group ordered by least confidence."""
    predicted_weak = weak[probs.argmax(axis=1)] if weak.any() else np.zeros(len(probs), bool)
    return predicted_weak.astype(float) + least_confidence(probs)


def kcenter_greedy(
    features: np.ndarray,
    budget: int,
    centres: np.ndarray | None = None,
    candidates: np.ndarray | None = None,
) -> list[int]:
    """Greedy k-center (core-set): repeatedly take the candidate farthest from every
    centre chosen so far, so one batch covers the feature space instead of repeating
    near-duplicates. ``centres`` are features already labelled."""
    feats = _normalise(features.astype(np.float32, copy=False))
    pool = np.arange(len(feats)) if candidates is None else np.asarray(candidates)
    if len(pool) == 0 or budget <= 0:
        return []
    sub = feats[pool]
    chosen: list[int] = []
    if centres is not None and len(centres):
        nearest = _min_sq_dist(sub, _normalise(centres.astype(np.float32, copy=False)))
    else:
        # Nothing labelled yet: start from the candidate nearest the mean, a typical cell.
        first = int(((sub - sub.mean(axis=0)) ** 2).sum(axis=1).argmin())
        nearest = ((sub - sub[first]) ** 2).sum(axis=1)
        nearest[first] = -1.0
        chosen.append(first)
        budget -= 1
    for _ in range(min(budget, len(pool) - len(chosen))):
        pick = int(nearest.argmax())
        if nearest[pick] < 0:
            break
        chosen.append(pick)
        nearest = np.minimum(nearest, ((sub - sub[pick]) ** 2).sum(axis=1))
        nearest[chosen] = -1.0
    return [int(pool[i]) for i in chosen]


def _normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-8)


def _min_sq_dist(x: np.ndarray, centres: np.ndarray, chunk: int = 4096) -> np.ndarray:
    out = np.empty(len(x), dtype=np.float32)
    c_sq = (centres**2).sum(axis=1)
    for start in range(0, len(x), chunk):
        block = x[start : start + chunk]
        d = (block**2).sum(axis=1)[:, None] - 2 * block @ centres.T + c_sq[None, :]
        out[start : start + chunk] = np.maximum(d.min(axis=1), 0.0)
    return out


def default_order(
    probs: np.ndarray,
    features: np.ndarray | None,
    weak: np.ndarray,
    labelled_features: np.ndarray | None = None,
    budget: int | None = None,
) -> list[int]:
    """The product's default: class-balanced and diverse.

    Cells are grouped by predicted class and taken in turns, one from each class per
    turn: classes the model is weak at first, then the classes it predicts least often.
    A batch therefore covers every class the model believes it sees, rare ones included,
    instead of piling up where it is most confused. Within a class the first ``budget``
    cells are spread by k-center greedy over the features (unlike each other and unlike
    what is already labelled), the rest follow by confidence; without features, by
    confidence alone.

    Why not uncertainty first: on the deepapl pool (mlworker/al_sim.md) every
    uncertainty strategy stayed below random for most of the budget, because with a
    weak, shifted model the uncertain cells are the inseparable ones; class-balanced
    k-center reached random's final balanced accuracy with under a third of its labels.
    """
    n = len(probs)
    if n == 0:
        return []
    predicted = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    groups: list[list[int]] = []
    for cls in np.unique(predicted):
        members = np.flatnonzero(predicted == cls)
        by_confidence = [int(i) for i in members[np.argsort(-confidence[members], kind="stable")]]
        if features is not None and budget:
            spread = kcenter_greedy(
                features,
                min(len(members), budget),
                centres=labelled_features,
                candidates=members,
            )
            seen = set(spread)
            groups.append(spread + [i for i in by_confidence if i not in seen])
        else:
            groups.append(by_confidence)
    groups.sort(key=lambda g: (not bool(weak[predicted[g[0]]]), len(g)))
    ranking: list[int] = []
    for turn in range(max(len(g) for g in groups)):
        ranking += [g[turn] for g in groups if turn < len(g)]
    return ranking


def order(
    strategy: str,
    probs: np.ndarray,
    *,
    features: np.ndarray | None = None,
    weak: np.ndarray | Sequence[bool] | None = None,
    labelled_features: np.ndarray | None = None,
    budget: int | None = None,
    rng: np.random.Generator | None = None,
) -> list[int]:
    """Indices of ``probs`` rows, most useful to label first."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    probs = np.asarray(probs, dtype=np.float64)
    n = len(probs)
    weak_mask = np.zeros(probs.shape[1], bool) if weak is None else np.asarray(weak, dtype=bool)
    if n == 0:
        return []
    if strategy == "random":
        return [int(i) for i in (rng or np.random.default_rng(0)).permutation(n)]
    if strategy == "kcenter":
        if features is None:
            raise ValueError("kcenter needs feature vectors")
        first = kcenter_greedy(features, budget or n, centres=labelled_features)
        seen = set(first)
        return first + [i for i in range(n) if i not in seen]
    if strategy == "default":
        return default_order(probs, features, weak_mask, labelled_features, budget)
    scores = {
        "least_confidence": least_confidence,
        "margin": margin_uncertainty,
        "entropy": entropy,
    }
    s = weak_class_scores(probs, weak_mask) if strategy == "weak_class" else scores[strategy](probs)
    return [int(i) for i in np.argsort(-s, kind="stable")]
