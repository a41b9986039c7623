"""Tiny training runs shared by the training tests: configs, generated images, resuming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlworker.data import Sample
from mlworker.model import build_classifier, make_checkpoint
from mlworker.train import TrainConfig, TrainResult, fit
from mlworker.train.engine import load_state


def tiny_config(**overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        "arch": "resnet18",
        "weights": "none",
        "image_size": 32,
        "batch_size": 8,
        "epochs_head": 1,
        "epochs_finetune": 1,
        "epochs_weak": 1,
        "threads": 1,
        "workers": 0,
        "progress_every_s": 0.0,
    }
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


def colour_samples(
    root: Path, per_class: int, codes: tuple[str, ...] = ("NE", "LY"), patient: bool = False
) -> list[Sample]:
    """Generated noisy images whose class is their dominant colour: learnable in a few steps."""
    rng = np.random.default_rng(0)
    colours = {"NE": (200, 60, 60), "LY": (60, 60, 200), "MO": (60, 200, 60)}
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for code in codes:
        for i in range(per_class):
            pixels = np.clip(rng.normal(colours[code], 25, size=(40, 40, 3)), 0, 255)
            path = root / f"{code}_{i}.png"
            Image.fromarray(pixels.astype(np.uint8)).save(path)
            samples.append(Sample(path=path, code=code, patient=f"p{i % 4}" if patient else None))
    return samples


def start_checkpoint(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = build_classifier("resnet18", weights=None)
    return make_checkpoint(model, arch="resnet18", input_size=32)  # type: ignore[return-value]


def stopped_after_and_resumed(
    train: list[Sample],
    val: list[Sample],
    config: TrainConfig,
    tmp_path: Path,
    stage: str,
    epoch: int,
) -> tuple[dict[str, torch.Tensor], TrainResult]:
    """Run ``fit``, stop it once epoch ``epoch`` of ``stage`` is saved, resume it to the end.

    Returns the model's state dict at the stop (as the resume file holds it) and the result.
    """

    class Stop(Exception):
        pass

    def stop_after(event: dict) -> None:
        if event["stage"] == stage and event["epoch"] == epoch and event["log"]:
            raise Stop

    state = tmp_path / "state.pt"
    with pytest.raises(Stop):
        fit(train, val, config, progress=stop_after, state_path=state)
    saved = load_state(state)
    assert (saved["stage"], saved["epoch"]) == (stage, epoch)
    return dict(saved["model"]), fit(train, val, config, resume_state=saved, state_path=state)


def stopped_after_first_finetune_epoch_and_resumed(
    train: list[Sample], val: list[Sample], config: TrainConfig, tmp_path: Path
) -> TrainResult:
    return stopped_after_and_resumed(train, val, config, tmp_path, "finetune", 1)[1]
