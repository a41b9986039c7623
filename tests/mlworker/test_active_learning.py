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


def test_default_batch_covers_every_predicted_class_and_is_diverse() -> None:
    probs, features = _state(clusters=6)
    predicted = probs.argmax(axis=1)
    classes = set(predicted.tolist())
    ranking = al.order("default", probs, features=features, weak=np.zeros(K, bool), budget=20)
    picks = ranking[: len(classes)]
    # one cell of every predicted class before a second of any: the rare classes (the
    # small clusters) are in the first turn, where margin would take only the big one
    assert set(predicted[picks].tolist()) == classes
    cluster = np.repeat(np.arange(6), [250] + [10] * 5)
    two_turns = 2 * len(classes)  # the second pick of a class is the one farthest from the first
    assert set(cluster[ranking[:two_turns]]) == set(range(6))
    assert set(cluster[al.order("margin", probs)[:two_turns]]) == {0}
    # within a class the picks are spread out, not near-duplicates of each other
    big = [i for i in ranking[:60] if predicted[i] == predicted[ranking[0]]][:3]
    f = features[big]
    d = ((f[:, None] - f[None]) ** 2).sum(-1) + np.eye(len(big)) * 1e9
    assert d.min() > 1.0


def test_default_takes_weak_classes_first_in_each_turn() -> None:
    probs, features = _state(clusters=6)
    predicted = probs.argmax(axis=1)
    common = int(np.bincount(predicted).argmax())
    weak = np.zeros(K, bool)
    weak[common] = True
    ranking = al.order("default", probs, features=features, weak=weak, budget=20)
    assert predicted[ranking[0]] == common
    unweighted = al.order("default", probs, features=features, weak=np.zeros(K, bool), budget=20)
    assert predicted[unweighted[0]] != common  # otherwise the rarest class leads


def test_default_stays_away_from_what_is_labelled() -> None:
    probs, features = _state(clusters=6)
    predicted = probs.argmax(axis=1)
    cls = int(np.bincount(predicted).argmax())
    members = np.flatnonzero(predicted == cls)
    labelled = features[members[:1]]
    ranking = al.order(
        "default", probs, features=features, weak=np.zeros(K, bool), budget=5,
        labelled_features=labelled,
    )  # fmt: skip
    first_of_class = next(i for i in ranking if predicted[i] == cls)
    nearest = ((features[members] - labelled[0]) ** 2).sum(axis=1).argmin()
    assert first_of_class != members[nearest]


def test_default_without_features_orders_by_confidence_within_each_class() -> None:
    probs, _ = _state()
    ranking = al.order("default", probs, weak=np.zeros(K, bool))
    assert sorted(ranking) == list(range(len(probs)))
    predicted = probs.argmax(axis=1)
    cls = int(np.bincount(predicted).argmax())
    mine = [i for i in ranking if predicted[i] == cls]
    confidence = probs.max(axis=1)[mine]
    assert (np.diff(confidence) <= 0).all()


def test_unknown_strategy_and_missing_features_are_refused() -> None:
    probs, _ = _state()
    with pytest.raises(ValueError, match="unknown strategy"):
        al.order("vibes", probs)
    with pytest.raises(ValueError, match="feature"):
        al.order("kcenter", probs)


def test_empty_pool_gives_an_empty_order() -> None:
    assert al.order("default", np.zeros((0, K)), features=np.zeros((0, 8)), budget=5) == []
