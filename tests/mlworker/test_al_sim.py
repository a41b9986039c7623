"""The label-efficiency simulation: outputs, selection rules, reproducibility."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mlworker import active_learning
from mlworker.al_sim.__main__ import get_args_parser, main
from mlworker.al_sim.prepare import decode_folder, patient_split
from mlworker.al_sim.simulate import (
    Head,
    HeadConfig,
    PoolState,
    SimConfig,
    held_out_tpr,
    run_strategy,
    select,
    weak_mask,
)
from mlworker.taxonomy import CODES
from tests.paths import SHARED_DATA

K = len(CODES)


def _synthetic_state(n: int = 400, d: int = 24, seed: int = 0) -> tuple[PoolState, Head]:
    """Cells of 6 classes around separate feature centres; a quarter are test cells."""
    rng = np.random.default_rng(seed)
    classes = np.array([CODES.index(c) for c in ("NE", "LY", "BL", "AR", "PC", "BA")])
    labels = classes[rng.integers(0, len(classes), n)]
    centres = rng.normal(size=(K, d)) * 3
    features = (centres[labels] + rng.normal(size=(n, d)) * 1.5).astype(np.float32)
    test = np.zeros(n, bool)
    test[rng.permutation(n)[: n // 4]] = True
    head = Head(weight=rng.normal(size=(K, d)) * 0.01, bias=np.zeros(K))
    return PoolState(features=features, labels=labels, test=test), head


@pytest.mark.slow
def test_simulation_on_a_tiny_configuration_writes_every_output(tmp_path: Path) -> None:
    args = get_args_parser().parse_args(
        [
            "--base-data",
            str(SHARED_DATA / "pbc"),
            "--pool-data",
            str(SHARED_DATA / "deepapl"),
            "--strategies",
            ",".join(active_learning.STRATEGIES),
            "--seed-labels",
            "20",
            "--batch",
            "10",
            "--rounds",
            "1",
            "--repeats",
            "2",
            "--base-per-class",
            "6",
            "--pool-per-class",
            "14",
            "--image-size",
            "32",
            "--base-epochs",
            "1",
            "--base-batch-size",
            "16",
            "--head-epochs",
            "2",
            "--out",
            str(tmp_path / "sim"),
        ]
    )
    main(args)
    out = tmp_path / "sim"
    for name in ("curves.csv", "learning_curves.png", "summary.json", "details.json"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "curves.csv").open()))
    assert set(rows[0]) == {
        "strategy",
        "repeat",
        "round",
        "labels",
        "balanced_accuracy",
        "abnormal_tpr",
    }
    assert {r["strategy"] for r in rows} == set(active_learning.STRATEGIES)
    assert len(rows) == len(active_learning.STRATEGIES) * 2 * 2  # strategies x repeats x rounds
    assert {int(r["labels"]) for r in rows} == {20, 30}
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"budget", "random_final_balanced_accuracy", "strategies"}
    assert summary["budget"] == 30
    assert set(summary["strategies"]) == set(active_learning.STRATEGIES)
    for figures in summary["strategies"].values():
        assert set(figures) == {"labels_to_reach_random_final", "final_balanced_accuracy", "auc"}
        assert 0.0 <= figures["auc"] <= 1.0
    assert summary["strategies"]["random"]["labels_to_reach_random_final"] is not None
    # cached: a second run trains nothing and gives the same curves
    first = (out / "curves.csv").read_text()
    main(args)
    assert (out / "curves.csv").read_text() == first
    details = json.loads((out / "details.json").read_text())
    assert details["timings"]["base_model_s"] < 5


@pytest.mark.parametrize("strategy", active_learning.STRATEGIES)
def test_a_strategy_never_picks_a_test_cell_or_a_labelled_one(strategy: str) -> None:
    state, head = _synthetic_state()
    rng = np.random.default_rng(0)
    labelled = np.flatnonzero(~state.test)[:40]
    weak = np.ones(K, bool)
    for round_index in range(3):
        picked = select(strategy, state, labelled, head, 50, weak, rng, round_index)
        assert len(picked) == 50
        assert len(set(picked.tolist())) == 50
        assert not state.test[picked].any()
        assert not np.isin(picked, labelled).any()
        labelled = np.concatenate([labelled, picked])


def test_selection_stops_when_the_pool_is_exhausted() -> None:
    state, head = _synthetic_state(n=80)
    labelled = np.flatnonzero(~state.test)[:-5]
    picked = select(
        "default", state, labelled, head, 50, np.ones(K, bool), np.random.default_rng(0)
    )
    assert sorted(picked.tolist()) == sorted(np.flatnonzero(~state.test)[-5:].tolist())


def test_strategies_pick_different_cells_on_the_same_state() -> None:
    state, head = _synthetic_state()
    rng_seed = 3
    labelled = np.flatnonzero(~state.test)[:30]
    # a head trained on the labelled cells, so the uncertainty strategies have signal
    from mlworker.al_sim.simulate import train_head

    head = train_head(state.features[labelled], state.labels[labelled], head, HeadConfig(), 0)
    weak = weak_mask([None] * K, 0.9)
    picks = {
        s: frozenset(
            select(s, state, labelled, head, 20, weak, np.random.default_rng(rng_seed)).tolist()
        )
        for s in active_learning.STRATEGIES
    }
    assert len(set(picks.values())) >= 5
    assert picks["random"] != picks["margin"] != picks["kcenter"]
    assert picks["default"] != picks["random"]


def test_random_with_a_fixed_seed_is_reproducible() -> None:
    state, head = _synthetic_state()
    config = SimConfig(
        seed_labels=30, batch=20, rounds=2, repeats=1, seed=5, head=HeadConfig(epochs=2)
    )
    first = run_strategy("random", state, head, config, repeat=0)
    again = run_strategy("random", state, head, config, repeat=0)
    other = run_strategy("random", state, head, config, repeat=1)
    assert [p.picked for p in first] == [p.picked for p in again]
    assert [p.balanced_accuracy for p in first] == [p.balanced_accuracy for p in again]
    assert [p.picked for p in first] != [p.picked for p in other]


def test_every_strategy_starts_from_the_same_seed_labels() -> None:
    state, head = _synthetic_state()
    config = SimConfig(seed_labels=30, batch=20, rounds=1, repeats=1, head=HeadConfig(epochs=1))
    seeds = {
        s: run_strategy(s, state, head, config, repeat=0)[0].balanced_accuracy
        for s in ("random", "margin", "default")
    }
    assert len(set(seeds.values())) == 1  # round 0 is the seed, the same for all


def test_weak_classes_are_those_below_the_threshold_or_unknown() -> None:
    state, head = _synthetic_state()
    labelled = np.flatnonzero(~state.test)[:120]
    tpr = held_out_tpr(state.features[labelled], state.labels[labelled], head, HeadConfig(), 0)
    weak = weak_mask(tpr, 0.9)
    present = set(state.labels[labelled].tolist())
    for k in range(K):
        if k not in present:
            assert tpr[k] is None and weak[k]
        else:
            assert tpr[k] is not None and weak[k] == (tpr[k] < 0.9)


def test_patient_split_keeps_each_patient_on_one_side() -> None:
    rng = np.random.default_rng(0)
    patients = [f"P{i // 20}" for i in range(400)]
    labels = rng.integers(0, 5, 400)
    test = patient_split(labels, patients, 0.25, seed=1)
    for p in set(patients):
        sides = {bool(test[i]) for i, q in enumerate(patients) if q == p}
        assert len(sides) == 1
    assert 0.15 < test.mean() < 0.35


def test_decoding_leaves_out_unreadable_and_ambiguous_images(tmp_path: Path) -> None:
    src = sorted((SHARED_DATA / "pbc" / "NE").glob("*.jpg"))[:3]
    for code in ("NE", "LY"):
        (tmp_path / code).mkdir()
    shutil.copy(src[0], tmp_path / "NE" / "a.jpg")
    shutil.copy(src[1], tmp_path / "NE" / "b.jpg")
    shutil.copy(src[1], tmp_path / "LY" / "b.jpg")  # the same cell filed under two classes
    shutil.copy(src[2], tmp_path / "LY" / "c.jpg")
    (tmp_path / "LY" / "d.jpg").write_bytes(src[2].read_bytes()[:2000])  # truncated
    decoded = decode_folder(tmp_path, 32)
    assert [Path(p).name for p in decoded.paths] == ["c.jpg", "a.jpg"]
    assert tuple(decoded.images.shape) == (2, 3, 32, 32)
    assert len(decoded.ambiguous) == 2
    assert [Path(p).name for p in decoded.unreadable] == ["d.jpg"]


def test_decoding_with_a_crop_magnifies_the_centre_and_caches_apart(tmp_path: Path) -> None:
    src = sorted((SHARED_DATA / "pbc" / "NE").glob("*.jpg"))[0]
    (tmp_path / "data" / "NE").mkdir(parents=True)
    shutil.copy(src, tmp_path / "data" / "NE" / "a.jpg")
    cache = tmp_path / "cache"
    whole = decode_folder(tmp_path / "data", 32, cache)
    centre = decode_folder(tmp_path / "data", 32, cache, crop=0.5)
    assert whole.images.shape == centre.images.shape
    assert len(list(cache.glob("decoded-*.pt"))) == 2  # one cache entry per crop
    # the central half of the whole-frame decode, enlarged, looks like the cropped decode
    middle = whole.images[0, :, 8:24, 8:24].float()
    enlarged = torch.nn.functional.interpolate(middle[None], size=32, mode="bilinear")[0]
    assert (enlarged - centre.images[0].float()).abs().mean() < 20
    assert (whole.images[0].float() - centre.images[0].float()).abs().mean() > 20
