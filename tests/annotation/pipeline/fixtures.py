from __future__ import annotations

from pathlib import Path

import torch

from annotation.models import ModelVersion
from annotation.services.model_registry import model_version_promote, model_version_register
from mlworker.model import build_classifier, make_checkpoint, save_checkpoint
from mlworker.taxonomy import CODES
from tests.annotation.helpers import copy_files, first_images


def tiny_checkpoint(
    path: Path, *, seed: int = 0, tpr: dict[str, float] | None = None, balanced: float = 0.8
) -> Path:
    """A small real classifier (ResNet-18 at 32 px, random weights) with given metrics."""
    torch.manual_seed(seed)
    model = build_classifier("resnet18", num_classes=len(CODES), weights=None)
    per_class = {
        code: {"n": 10, "tpr": (tpr or {}).get(code, 0.95), "precision": 0.9} for code in CODES
    }
    metrics = {"balanced_accuracy": balanced, "per_class": per_class}
    return save_checkpoint(
        make_checkpoint(model, arch="resnet18", input_size=32, metrics=metrics), path
    )


def active_version(tmp_path: Path, **kwargs: object) -> ModelVersion:
    ckpt = tiny_checkpoint(tmp_path / "v.pt", **kwargs)  # type: ignore[arg-type]
    version = model_version_register(checkpoint_path=ckpt)
    return model_version_promote(version_id=version.pk, user=None)


def unlabelled_folder(
    shared_data: Path,
    dest: Path,
    per_class: int = 2,
    classes: tuple[str, ...] = ("NE", "LY", "MO", "EO", "BA", "MY"),
) -> Path:
    """Real cell images at the top level of a folder: imported as unlabelled cells."""
    for code in classes:
        copy_files(first_images(shared_data / "pbc" / code, per_class), dest)
    return dest
