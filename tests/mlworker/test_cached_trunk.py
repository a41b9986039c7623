"""Cached-trunk retraining (mlworker/train/cached.py): the split of the network is exact, the
trunk stays frozen, the cache is read back on the next retrain, AdaBN changes only the
statistics and is not redone for the same cells, and the checkpoint scores as it was judged."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch

from mlworker.model import Checkpoint, model_from_checkpoint, new_classifier
from mlworker.score import Scorer, score_labelled
from mlworker.train import TrainConfig, parse_train_config
from mlworker.train.cached import fit_cached
from tests.mlworker.tiny_training import colour_samples, start_checkpoint


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_lite0"])
def test_tail_of_trunk_is_the_whole_network(arch: str) -> None:
    torch.manual_seed(0)
    model = new_classifier(arch, 14).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        whole = model(x)
        split = model.forward_tail(model.forward_trunk(x))
    assert torch.allclose(whole, split, atol=1e-5)
    trunk = {id(p) for m in model.trunk_modules() for p in m.parameters()}
    tail = {id(p) for m in model.last_stage_modules() for p in m.parameters()}
    assert trunk and tail and not trunk & tail


def _config(*extra: str, init: Checkpoint) -> TrainConfig:
    flags = "--cached-trunk --epochs-finetune 10 --lr 0.01 --batch-size 8 --threads 1"
    return parse_train_config(
        [*flags.split(), "--progress-every-s", "0", *extra],
        init_checkpoint=init,
    )


def _trunk_state(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    model = model_from_checkpoint(checkpoint)
    return {
        f"{i}.{k}": v.clone()
        for i, m in enumerate(model.trunk_modules())
        for k, v in m.state_dict().items()
    }


def test_a_cached_retrain_keeps_the_trunk_and_reads_its_cache_back(tmp_path: Path) -> None:
    samples = colour_samples(tmp_path / "img", 12, codes=("NE", "LY", "MO"))
    train, val = samples[::2], samples[1::2]
    init = cast(Checkpoint, start_checkpoint())
    cache = tmp_path / "cache"
    config = _config("--trunk-cache", str(cache), init=init)
    reports: list[dict] = []
    first = fit_cached(train, val, config, init_checkpoint=init, progress=reports.append)
    info = first.metrics["cached_trunk"]
    assert info["computed"] == len(samples) and info["read_back"] == 0 and info["views"] == 4
    assert any("trunk activations" in str(r.get("log")) for r in reports)
    # the trunk is frozen (weights and statistics); the last stage learnt
    before, after = _trunk_state(init), _trunk_state(first.checkpoint)
    assert all(torch.equal(before[k], after[k]) for k in before)
    fc_before = init["model"]["fc.weight"]
    assert not torch.equal(fc_before, first.checkpoint["model"]["fc.weight"])
    # the colours are learnable: the validation figure is what fit_cached claims
    assert first.metrics["balanced_accuracy"] > 0.9
    # the next retrain, from the new version (same trunk), reads every activation back
    second = fit_cached(train, val, config, init_checkpoint=first.checkpoint)
    again = second.metrics["cached_trunk"]
    assert again["fingerprint"] == info["fingerprint"]
    assert again["read_back"] == len(samples) and again["computed"] == 0


def test_the_checkpoint_scores_as_it_was_judged(tmp_path: Path) -> None:
    samples = colour_samples(tmp_path / "img", 10, codes=("NE", "LY", "MO"))
    train, val = samples[::2], samples[1::2]
    init = cast(Checkpoint, start_checkpoint())
    result = fit_cached(train, val, _config(init=init), init_checkpoint=init)
    scorer = Scorer(result.checkpoint)
    scored = score_labelled(scorer, val, num_workers=0)
    # the activations are cached in float16: the same probabilities within that rounding
    assert np.abs(scored.probabilities - result.val_probabilities).max() < 2e-2
    assert (scored.probabilities.argmax(1) == result.val_probabilities.argmax(1)).mean() == 1.0


def test_adabn_changes_only_the_statistics_and_is_not_redone(tmp_path: Path) -> None:
    samples = colour_samples(tmp_path / "img", 8, codes=("NE", "LY"))
    site = colour_samples(tmp_path / "site", 8, codes=("MO",))
    init = cast(Checkpoint, start_checkpoint())
    config = _config("--adapt-bn", "--trunk-cache", str(tmp_path / "c"), init=init)
    result = fit_cached(
        samples[::2],
        samples[1::2],
        config,
        init_checkpoint=init,
        adapt=samples + site,
    )
    before, after = _trunk_state(init), _trunk_state(result.checkpoint)
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    weights = [k for k in before if k.endswith(("weight", "bias")) and k not in stats]
    assert any(not torch.equal(before[k], after[k]) for k in stats)
    assert all(torch.equal(before[k], after[k]) for k in weights)
    adapted = result.metrics["cached_trunk"]["bn_adapted_on"]
    assert adapted and adapted.startswith(f"{len(samples + site)}:")
    # from the adapted version, on the same cells: no second adaptation, same trunk, cache hit
    again = fit_cached(
        samples[::2],
        samples[1::2],
        config,
        init_checkpoint=result.checkpoint,
        adapt=samples + site,
    )
    info = again.metrics["cached_trunk"]
    assert info["fingerprint"] == result.metrics["cached_trunk"]["fingerprint"]
    assert info["read_back"] == len(samples) and info["computed"] == 0
