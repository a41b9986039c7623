"""The product's selection strategies on synthetic probabilities and features."""

from __future__ import annotations

import numpy as np
import pytest

from mlworker import active_learning as al

K = 14


def _state(n: int = 300, clusters: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and features of n cells in well separated feature clusters; cluster 0
    holds most cells and is where the model is least sure."""
    rng = np.random.default_rng(seed)
    sizes = [n - 10 * (clusters - 1)] + [10] * (clusters - 1)
    cluster = np.repeat(np.arange(clusters), sizes)
    centres = rng.normal(size=(clusters, 32)) * 10
    features = centres[cluster] + rng.normal(size=(n, 32))
    logits = rng.normal(size=(n, K))
    logits[np.arange(n), cluster] += np.where(cluster == 0, 0.2, 4.0)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs, features


@pytest.mark.parametrize("strategy", al.STRATEGIES)
def test_every_strategy_ranks_every_cell_once(strategy: str) -> None:
    probs, features = _state()
    ranking = al.order(strategy, probs, features=features, budget=20, rng=np.random.default_rng(1))
    assert sorted(ranking) == list(range(len(probs)))


def test_strategies_pick_different_cells_on_the_same_state() -> None:
    probs, features = _state()
    weak = np.zeros(K, bool)
    weak[[3, 4]] = True
    top = {
        s: frozenset(
            al.order(
                s, probs, features=features, weak=weak, budget=20, rng=np.random.default_rng(1)
            )[:20]
        )
        for s in al.STRATEGIES
    }
    assert len(set(top.values())) >= 5  # margin/entropy/least_confidence may agree closely
    assert top["random"] != top["least_confidence"] != top["kcenter"]
    assert top["weak_class"] != top["least_confidence"]


def test_kcenter_covers_every_cluster_uncertainty_does_not() -> None:
    probs, features = _state(clusters=6)
    cluster = np.repeat(np.arange(6), [250] + [10] * 5)
    kcenter = al.order("kcenter", probs, features=features, budget=6)[:6]
    assert len(set(cluster[kcenter])) == 6
    margin = al.order("margin", probs)[:6]
    assert set(cluster[margin]) == {0}


def test_kcenter_stays_away_from_what_is_labelled() -> None:
    _, features = _state(clusters=6)
    cluster = np.repeat(np.arange(6), [250] + [10] * 5)
    labelled = features[cluster >= 3][::5]  # clusters 3, 4, 5 already have labels
    picks = al.kcenter_greedy(features, 3, centres=labelled)
    assert set(cluster[picks]) == {0, 1, 2}


def test_weak_classes_come_first() -> None:
    probs, _ = _state()
    weak = np.zeros(K, bool)
    weak[4] = True
    ranking = al.order("weak_class", probs, weak=weak)
    predicted_weak = probs.argmax(axis=1) == 4
    n_weak = int(predicted_weak.sum())
    assert n_weak > 0
    assert predicted_weak[ranking[:n_weak]].all()


def test_random_is_reproducible_with_a_seed() -> None:
    probs, _ = _state()
    first = al.order("random", probs, rng=np.random.default_rng(7))
    again = al.order("random", probs, rng=np.random.default_rng(7))
    other = al.order("random", probs, rng=np.random.default_rng(8))
    assert first == again != other


def test_default_batch_is_uncertain_and_diverse() -> None:
    probs, features = _state(clusters=6)
    ranking = al.order("default", probs, features=features, weak=np.zeros(K, bool), budget=20)
    picks = ranking[:20]
    cluster = np.repeat(np.arange(6), [250] + [10] * 5)
    margin = al.margin_uncertainty(probs)
    assert margin[picks].mean() > np.median(margin)  # more uncertain than a typical cell
    # no two picks are near-duplicates of each other
    f = features[picks]
    d = ((f[:, None] - f[None]) ** 2).sum(-1) + np.eye(len(picks)) * 1e9
    assert d.min() > 1.0
    assert len(set(cluster[picks])) >= 1


def test_default_without_features_still_orders_by_score() -> None:
    probs, _ = _state()
    ranking = al.order("default", probs, weak=np.zeros(K, bool))
    assert sorted(ranking) == list(range(len(probs)))


def test_unknown_strategy_and_missing_features_are_refused() -> None:
    probs, _ = _state()
    with pytest.raises(ValueError, match="unknown strategy"):
        al.order("vibes", probs)
    with pytest.raises(ValueError, match="feature"):
        al.order("kcenter", probs)


def test_empty_pool_gives_an_empty_order() -> None:
    assert al.order("default", np.zeros((0, K)), features=np.zeros((0, 8)), budget=5) == []
