"""Training options: the learning-rate schedule, weight averaging, TTA, low-res epochs.

Tiny runs only, as in test_train.py: ResNet-18 at 32 px on generated colour images.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlworker.train import evaluate_samples, fit, parse_train_config
from mlworker.train.averaging import average_steps, averaged_state, weight_average
from mlworker.train.optim import current_lr, lr_scheduler
from tests.mlworker.tiny_training import (
    colour_samples,
    start_checkpoint,
    stopped_after_first_finetune_epoch_and_resumed,
    tiny_config,
)

# --- learning-rate schedule --------------------------------------------------------------


def _rate_of_earlier_versions(
    schedule: str, warmup: int, step: int, gamma: float, base_lr: float, epoch: int, epochs: int
) -> float:
    """``lr_at`` as it was before the schedule became a torch ``lr_scheduler``."""
    if epoch < warmup:
        return base_lr * (epoch + 1) / (warmup + 1)
    if schedule == "cosine":
        span = max(1, epochs - warmup)
        return base_lr * 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / span))
    return base_lr * gamma ** (epoch // step)


@pytest.mark.parametrize("schedule", ["step", "cosine"])
@pytest.mark.parametrize("warmup", [0, 1, 3])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_lr_scheduler_gives_the_rates_of_earlier_versions(
    schedule: str, warmup: int, optimizer: str
) -> None:
    for epochs in (1, 4, 13, 40):
        for base_lr, step, gamma in ((0.01, 10, 0.1), (0.003, 3, 0.5)):
            config = tiny_config(
                lr_schedule=schedule,
                warmup_epochs=warmup,
                lr_step=step,
                lr_gamma=gamma,
                optimizer=optimizer,
            )
            param = torch.nn.Parameter(torch.zeros(2))
            opt = (torch.optim.AdamW if optimizer == "adamw" else torch.optim.SGD)(
                [param], lr=base_lr
            )
            scheduler = lr_scheduler(opt, config, epochs)
            for epoch in range(epochs):
                expected = _rate_of_earlier_versions(
                    schedule, warmup, step, gamma, base_lr, epoch, epochs
                )
                if schedule == "step" and not warmup:  # the default: the very same floats
                    assert current_lr(opt) == expected, (epochs, epoch)
                else:
                    assert math.isclose(current_lr(opt), expected, rel_tol=1e-12), (epochs, epoch)
                opt.step()
                scheduler.step()


@pytest.mark.parametrize("schedule", ["step", "cosine"])
def test_a_reloaded_lr_scheduler_continues_with_the_same_rates(schedule: str) -> None:
    config = tiny_config(lr_schedule=schedule, warmup_epochs=2, lr_step=3)
    epochs, stop = 9, 4

    def fresh() -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.01, momentum=0.9)
        return opt, lr_scheduler(opt, config, epochs)

    opt, scheduler = fresh()
    rates = []
    saved: dict = {}
    for epoch in range(epochs):
        rates.append(current_lr(opt))
        opt.step()
        scheduler.step()
        if epoch + 1 == stop:  # as the resume file keeps them, read back with weights_only
            buffer = io.BytesIO()
            torch.save({"optimizer": opt.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
            buffer.seek(0)
            saved = torch.load(buffer, weights_only=True)
    opt, scheduler = fresh()
    opt.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    resumed = []
    for _ in range(stop, epochs):
        resumed.append(current_lr(opt))
        opt.step()
        scheduler.step()
    assert resumed == rates[stop:]


# --- weight averaging ------------------------------------------------------------------


def test_weight_average_is_the_bias_corrected_mean_of_the_steps() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    decay = 0.9
    average = weight_average(model, decay)
    values = [1.0, 3.0, -2.0]
    for step, value in enumerate(values, start=1):
        with torch.no_grad():
            model[0].weight.fill_(value)
            model[1].running_mean.fill_(value)
            model[1].num_batches_tracked.fill_(step)
        average.update_parameters(model)
    # weights d^(T-t) (1 - d), normalised: the starting weights count for nothing
    raw = [decay ** (len(values) - t) * (1 - decay) for t in range(1, len(values) + 1)]
    expected = sum(w * v for w, v in zip(raw, values, strict=True)) / sum(raw)
    state = averaged_state(average)
    for key in ("0.weight", "1.running_mean"):
        assert torch.allclose(state[key], torch.full_like(state[key], expected))
    assert int(state["1.num_batches_tracked"]) == 3  # counters copied, not averaged
    assert average_steps(average) == 3
    with pytest.raises(ValueError, match=r"decay must be in \(0, 1\)"):
        weight_average(model, 1.0)


def test_ema_is_chosen_per_stage_and_resumes_exactly(tmp_path: Path) -> None:
    samples = colour_samples(tmp_path, 8, codes=("NE", "LY", "MO"))  # 12 training: 8 + 4
    train, val = samples[::2], samples[1::2]
    config = tiny_config(
        epochs_head=1, epochs_finetune=2, epochs_weak=1, weak_threshold=1.01, ema_decay=0.5
    )
    first = fit(train, val, config)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    assert set(first.metrics["ema"]) == {"head", "finetune", "weak"}
    finetune = first.metrics["ema"]["finetune"]
    assert finetune["steps"] == 2 * steps_per_epoch and finetune["kept"] in ("average", "last")
    last_finetune = [h for h in first.history if h["stage"] == "finetune"][-1]
    assert last_finetune["val_balanced_accuracy_ema"] == finetune["balanced_accuracy_average"]
    kept = max(finetune["balanced_accuracy_average"], finetune["balanced_accuracy_last"])
    if finetune["kept"] == "average":
        assert finetune["balanced_accuracy_average"] >= finetune["balanced_accuracy_last"]
    else:
        assert finetune["balanced_accuracy_average"] < finetune["balanced_accuracy_last"]
    assert first.metrics["weak_classes"]["balanced_accuracy_before"] == kept

    resumed = stopped_after_first_finetune_epoch_and_resumed(train, val, config, tmp_path)
    assert resumed.metrics["ema"] == first.metrics["ema"]
    for key, value in first.checkpoint["model"].items():
        assert torch.equal(resumed.checkpoint["model"][key], value), key
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        parse_train_config(["--ema-decay", "1"])


# --- test-time augmentation, progressive resizing, sparse validation -------------------


def test_tta_views_are_the_symmetries_of_the_square() -> None:
    from mlworker.presets import tta_views

    image = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert len(tta_views(image, "none")) == 1
    for mode, count in (("flips", 4), ("dihedral", 8)):
        views = tta_views(image, mode)
        assert torch.equal(views[0], image) and len(views) == count
        assert len({tuple(v.flatten().tolist()) for v in views}) == count  # all different
    # the dihedral set is closed under a quarter turn: the same views, in another order
    turned = {tuple(v.flatten().tolist()) for v in tta_views(image.rot90(1, (2, 3)), "dihedral")}
    assert turned == {tuple(v.flatten().tolist()) for v in tta_views(image, "dihedral")}
    with pytest.raises(ValueError, match="tta must be one of"):
        tta_views(image, "rotate")


def test_tta_is_recorded_and_scoring_repeats_what_training_measured(tmp_path: Path) -> None:
    from mlworker.device import choose_runtime
    from mlworker.model import checkpoint_tta
    from mlworker.score import Scorer

    samples = colour_samples(tmp_path, 6, codes=("NE", "LY", "MO"))
    train, val = samples[::2], samples[1::2]
    config = tiny_config(epochs_head=0, epochs_finetune=2, epochs_weak=0, tta="dihedral")
    result = fit(train, val, config)
    checkpoint = result.checkpoint
    assert checkpoint_tta(checkpoint) == "dihedral"
    assert parse_train_config([], init_checkpoint=checkpoint).tta == "dihedral"
    cpu = choose_runtime("cpu", "fp32")
    scores = Scorer(checkpoint, runtime=cpu).score(result.val_samples, num_workers=0)
    scored = np.stack([s.probabilities for s in scores])
    assert np.allclose(scored, result.val_probabilities, atol=1e-4)  # what training measured
    report = evaluate_samples(checkpoint, result.val_samples, runtime=cpu)
    assert report["balanced_accuracy"] == result.metrics["balanced_accuracy"]
    # the views are really averaged: a quarter-turned image scores the same ...
    image = torch.from_numpy(np.asarray(Image.open(val[0].path).convert("RGB"))).permute(2, 0, 1)
    image = image[:, :32, :32].contiguous()  # at the input size: no resize to round differently
    upright, turned = Scorer(checkpoint, runtime=cpu).score([image, image.rot90(1, (1, 2))])
    assert np.allclose(upright.probabilities, turned.probabilities, atol=1e-5)
    # ... and without TTA the same weights give other probabilities
    plain = {**checkpoint, "args": {**checkpoint["args"], "tta": "none"}}
    plain_scores = Scorer(plain, runtime=cpu).score(result.val_samples, num_workers=0)
    assert not np.allclose(np.stack([s.probabilities for s in plain_scores]), scored, atol=1e-4)
    assert checkpoint_tta(start_checkpoint()) == "none"  # older checkpoints: no TTA


def test_low_res_epochs_train_smaller_images_then_the_full_size(tmp_path: Path) -> None:
    samples = colour_samples(tmp_path, 6)
    config = tiny_config(
        epochs_head=0, epochs_finetune=3, epochs_weak=0, low_res_size=16, low_res_epochs=2
    )
    result = fit(samples[::2], samples[1::2], config)
    assert [h["train_size"] for h in result.history] == [16, 16, 32]
    # low-res epochs are not validated (BatchNorm statistics of the other scale)
    assert [h["val_balanced_accuracy"] is not None for h in result.history] == [False, False, True]
    assert result.checkpoint["input_size"] == 32  # scoring and validation: the full size
    assert parse_train_config(["--low-res-size", "64", "--low-res-epochs", "4"]).low_res_epochs == 4
    with pytest.raises(ValueError, match="needs --low-res-size"):
        parse_train_config(["--low-res-epochs", "4"])


def test_val_every_skips_validation_but_never_at_a_stage_end(tmp_path: Path) -> None:
    from mlworker.train.cli import write_training_curves

    samples = colour_samples(tmp_path, 6)
    config = tiny_config(epochs_head=0, epochs_finetune=3, epochs_weak=0, val_every=2)
    result = fit(samples[::2], samples[1::2], config)
    assert [h["val_balanced_accuracy"] is not None for h in result.history] == [False, True, True]
    assert result.history[0]["val_loss"] is None and result.history[0]["train_loss"] > 0
    assert write_training_curves(result.history, tmp_path / "curves.png").stat().st_size > 0
