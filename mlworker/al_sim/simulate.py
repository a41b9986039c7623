"""The rounds: seed, select, reveal, retrain the head, evaluate, for every strategy.

Only the final layer retrains, on the pooled features the base model gives once for the
whole pool (``prepare.extract_features``), exactly as the product's stage-1 retraining
keeps the backbone fixed; that is what makes 7 strategies x 15 rounds x 3 repeats fit
in minutes on two CPU cores.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mlworker import active_learning, taxonomy
from mlworker.evaluate import evaluation_report

logger = logging.getLogger(__name__)

K = len(taxonomy.CODES)


@dataclass(frozen=True)
class HeadConfig:
    """The product's stage-1 head training (mlworker/train defaults: SGD, lr 0.01,
    momentum 0.9, weight decay 1e-4, mini-batch 32, learning rate divided by 10 every 10
    epochs; class-weighted cross-entropy as with ``--balance loss``), starting from the
    base model's head. 20 epochs instead of the product's 10, so the learning rate is
    divided once: at a constant 0.01 the last iterate still oscillates, and two seeds on
    the same labels differ by up to 0.05 balanced accuracy (see mlworker/al_sim.md), which
    would drown the differences between strategies."""

    epochs: int = 20
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step: int = 10


@dataclass(frozen=True)
class RoutingRules:
    """The review queue's defaults (annotation RoutingConfig): which cells are queued."""

    confidence_threshold: float = 0.8
    weak_class_tpr: float = 0.9
    audit_rate: float = 0.02
    enabled: bool = True


@dataclass
class Head:
    weight: np.ndarray  # (K, d)
    bias: np.ndarray  # (K,)

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weight.T + self.bias

    def probs(self, features: np.ndarray) -> np.ndarray:
        z = self.logits(features)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def class_weights(labels: np.ndarray) -> np.ndarray:
    """Inverse frequency over the classes present (absent classes get 0: no samples)."""
    counts = np.bincount(labels, minlength=K).astype(np.float64)
    present = counts > 0
    w = np.zeros(K)
    w[present] = counts.sum() / (counts[present] * present.sum())
    return w


def train_head(
    features: np.ndarray, labels: np.ndarray, init: Head, config: HeadConfig, seed: int
) -> Head:
    """Fit the linear head on labelled features, starting from ``init``.

    Mini-batch SGD with momentum and weight decay, class-weighted mean cross-entropy and a
    step schedule: the update ``torch.optim.SGD`` makes, written out in NumPy because at
    this size (a 512 x 14 layer, batches of 32) torch's per-call overhead, and its thread
    pool on a busy CPU, cost 30x the arithmetic.
    """
    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(features, dtype=np.float64)
    y = labels.astype(np.int64)
    w_class = class_weights(y)
    weight = init.weight.astype(np.float64).copy()
    bias = init.bias.astype(np.float64).copy()
    v_weight = np.zeros_like(weight)
    v_bias = np.zeros_like(bias)
    lr = config.lr
    for epoch in range(config.epochs):
        if epoch and epoch % config.lr_step == 0:
            lr /= 10
        order = rng.permutation(len(y))
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            xb, yb = x[idx], y[idx]
            z = xb @ weight.T + bias
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            sample_w = w_class[yb]
            p[np.arange(len(yb)), yb] -= 1.0
            grad_z = p * (sample_w / sample_w.sum())[:, None]
            g_weight = grad_z.T @ xb + config.weight_decay * weight
            g_bias = grad_z.sum(axis=0) + config.weight_decay * bias
            v_weight = config.momentum * v_weight + g_weight
            v_bias = config.momentum * v_bias + g_bias
            weight -= lr * v_weight
            bias -= lr * v_bias
    return Head(weight=weight, bias=bias)


def held_out_tpr(
    features: np.ndarray,
    labels: np.ndarray,
    init: Head,
    config: HeadConfig,
    seed: int,
    folds: int = 3,
) -> list[float | None]:
    """Per-class TPR of the head on labelled cells it was not trained on (k-fold), the
    simulation's stand-in for the product's validation split; ``None`` where a class has
    no labelled cells."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(labels), dtype=np.int64)
    for k in range(K):  # stratified: each class spread over the folds
        members = np.flatnonzero(labels == k)
        fold_of[rng.permutation(members)] = np.arange(len(members)) % folds
    hits = np.zeros(K)
    support = np.bincount(labels, minlength=K).astype(np.float64)
    for f in range(folds):
        train, test = fold_of != f, fold_of == f
        if not test.any() or not train.any():
            continue
        head = train_head(features[train], labels[train], init, config, seed + 1000 * f)
        predicted = head.logits(features[test]).argmax(axis=1)
        np.add.at(hits, labels[test][predicted == labels[test]], 1)
    return [float(hits[k] / support[k]) if support[k] else None for k in range(K)]


def weak_mask(tpr: Sequence[float | None], threshold: float) -> np.ndarray:
    """As ``annotation.services.routing.weak_classes``: TPR below the threshold, or
    unknown (nobody has shown the model gets that class right)."""
    return np.array([t is None or t < threshold for t in tpr], dtype=bool)


def _audit_draw(cell: int, round_index: int) -> float:
    digest = hashlib.sha256(f"audit:{cell}:{round_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def routed_mask(
    probs: np.ndarray, weak: np.ndarray, cells: np.ndarray, round_index: int, rules: RoutingRules
) -> np.ndarray:
    """Which candidates the product's routing queues (``route_reasons``, no conflicts
    here: every cell has one annotator)."""
    low = probs.max(axis=1) < rules.confidence_threshold
    reason = low | weak[probs.argmax(axis=1)]
    audit = np.array([_audit_draw(int(c), round_index) < rules.audit_rate for c in cells])
    return reason | (~reason & audit)


@dataclass
class PoolState:
    """What a strategy may look at: features and labels of the pool and which cells are
    the never-queried test split."""

    features: np.ndarray
    labels: np.ndarray  # revealed only for labelled cells
    test: np.ndarray  # boolean mask

    @property
    def candidates_mask(self) -> np.ndarray:
        return ~self.test


def select(
    strategy: str,
    state: PoolState,
    labelled: np.ndarray,
    head: Head,
    batch: int,
    weak: np.ndarray,
    rng: np.random.Generator,
    round_index: int = 0,
    rules: RoutingRules | None = None,
) -> np.ndarray:
    """Pool indices of the next ``batch`` cells to label under ``strategy``.

    Candidates are the cells outside the test split that are not labelled yet. For
    ``default`` the product's routing runs first (only queued cells are ordered, as in
    ``cells_route``); if fewer than ``batch`` are queued the rest follow in the same
    order, so every strategy spends the same budget.
    """
    is_labelled = np.zeros(len(state.labels), dtype=bool)
    is_labelled[labelled] = True
    candidates = np.flatnonzero(state.candidates_mask & ~is_labelled)
    if len(candidates) == 0 or batch <= 0:
        return np.zeros(0, dtype=np.int64)
    feats = state.features[candidates]
    probs = head.probs(feats)
    labelled_features = state.features[labelled] if len(labelled) else None
    rules = rules or RoutingRules()

    def ranked(positions: np.ndarray) -> list[int]:
        ranking = active_learning.order(
            strategy,
            probs[positions],
            features=feats[positions],
            weak=weak,
            labelled_features=labelled_features,
            budget=min(batch, len(positions)),
            rng=rng,
        )
        return [int(positions[i]) for i in ranking]

    everything = np.arange(len(candidates))
    if strategy == "default" and rules.enabled:
        queued = routed_mask(probs, weak, candidates, round_index, rules)
        picks = ranked(everything[queued])[:batch] if queued.any() else []
        if len(picks) < batch:
            rest = everything[~queued]
            picks += ranked(rest)[: batch - len(picks)]
    else:
        picks = ranked(everything)[:batch]
    return candidates[np.asarray(picks, dtype=np.int64)]


@dataclass(frozen=True)
class SimConfig:
    seed_labels: int = 100
    batch: int = 100
    rounds: int = 15
    repeats: int = 3
    seed: int = 0
    head: HeadConfig = field(default_factory=HeadConfig)
    routing: RoutingRules = field(default_factory=RoutingRules)


@dataclass
class CurvePoint:
    strategy: str
    repeat: int
    round: int
    labels: int
    balanced_accuracy: float
    abnormal_tpr: float | None
    picked: list[int] = field(default_factory=list)  # pool indices picked after this round


def seed_set(state: PoolState, n: int, seed: int) -> np.ndarray:
    """A random seed from the non-test pool: what exists before any routing."""
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(state.candidates_mask)
    return np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))


def run_strategy(
    strategy: str,
    state: PoolState,
    base_head: Head,
    config: SimConfig,
    repeat: int,
) -> list[CurvePoint]:
    """One learning curve: the seed, then ``rounds`` batches chosen by ``strategy``."""
    seed = config.seed + 7919 * repeat
    labelled = seed_set(state, config.seed_labels, seed)
    rng = np.random.default_rng(seed + 1)
    test_idx = np.flatnonzero(state.test)
    points: list[CurvePoint] = []
    for r in range(config.rounds + 1):
        y = state.labels[labelled]
        head = train_head(state.features[labelled], y, base_head, config.head, seed + r)
        report = evaluation_report(state.labels[test_idx], head.probs(state.features[test_idx]))
        point = CurvePoint(
            strategy=strategy,
            repeat=repeat,
            round=r,
            labels=len(labelled),
            balanced_accuracy=float(report["balanced_accuracy"]),
            abnormal_tpr=report["abnormal_tpr"],
        )
        points.append(point)
        if r == config.rounds:
            break
        if strategy in {"default", "weak_class"}:
            tpr = held_out_tpr(state.features[labelled], y, base_head, config.head, seed + r)
            weak = weak_mask(tpr, config.routing.weak_class_tpr)
        else:
            weak = np.zeros(K, dtype=bool)
        picked = select(strategy, state, labelled, head, config.batch, weak, rng, r, config.routing)
        if len(picked) == 0:
            break
        point.picked = [int(i) for i in picked]
        labelled = np.concatenate([labelled, picked])
    return points


def run_all(
    strategies: Sequence[str], state: PoolState, base_head: Head, config: SimConfig
) -> list[CurvePoint]:
    points: list[CurvePoint] = []
    for repeat in range(config.repeats):
        for strategy in strategies:
            start = time.perf_counter()
            curve = run_strategy(strategy, state, base_head, config, repeat)
            points += curve
            logger.info(
                "%-16s repeat %d: BA %s (%.1f s)",
                strategy,
                repeat,
                " ".join(f"{p.balanced_accuracy:.3f}" for p in curve),
                time.perf_counter() - start,
            )
    return points
