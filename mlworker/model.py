"""WBC-ResNet classifier: builder and checkpoints.

The model is a torchvision ResNet backbone up to global average pooling (2,048-d
features for ResNet-50/101/152, 512-d for ResNet-18/34) and a fully connected head with
one output per 14-Diff class. It returns logits; softmax (with the calibrated
temperature) is applied by scoring, and cross-entropy by training.

Checkpoints are plain dicts (see ``Checkpoint``) and are always loaded with
``weights_only=True``. A checkpoint is refused when its architecture or its class list
does not match what the caller expects.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import torch
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models import ResNet

from mlworker import taxonomy
from mlworker.presets import (
    DEFAULT_CROP,
    DEFAULT_INPUT_SIZE,
    DEFAULT_TTA,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalPreset,
    check_crop,
    check_tta,
)

logger = logging.getLogger(__name__)

ARCHS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
DEFAULT_ARCH = "resnet152"
CHECKPOINT_FORMAT = "wbc-classifier/1"


class CheckpointError(ValueError):
    """A checkpoint that is malformed or does not match what the caller expects."""


class WBCClassifier(nn.Module):
    """ResNet backbone (pooled features) + fully connected head."""

    def __init__(self, backbone: ResNet, num_classes: int) -> None:
        super().__init__()
        self.feature_dim: int = backbone.fc.in_features
        backbone.fc = nn.Identity()  # type: ignore[assignment]
        self.backbone = backbone
        self.fc = nn.Linear(self.feature_dim, num_classes)

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (pooled features, logits)."""
        features = self.backbone(x)
        return features, self.fc(features)


def fuse_batchnorm(model: WBCClassifier) -> WBCClassifier:
    """Fold each BatchNorm into the convolution before it, in place, for inference only.

    Same function, one memory pass less per convolution (ResNet-152 has 155 BN layers).
    The model must be in eval mode and must not be trained afterwards.
    """
    if model.training:
        raise ValueError("fuse_batchnorm needs a model in eval mode")
    backbone = model.backbone
    backbone.conv1 = fuse_conv_bn_eval(backbone.conv1, backbone.bn1)  # type: ignore[assignment]
    backbone.bn1 = nn.Identity()  # type: ignore[assignment]
    for stage in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4):
        for block in stage:
            for i in (1, 2, 3):
                conv, bn = getattr(block, f"conv{i}", None), getattr(block, f"bn{i}", None)
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    setattr(block, f"conv{i}", fuse_conv_bn_eval(conv, bn))
                    setattr(block, f"bn{i}", nn.Identity())
            downsample = block.downsample
            if downsample is not None:
                downsample[0] = fuse_conv_bn_eval(downsample[0], downsample[1])
                downsample[1] = nn.Identity()
    return model


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unsupported arch {arch!r}; choose one of {', '.join(ARCHS)}")


def _load_weights_file(model: WBCClassifier, path: Path, arch: str) -> None:
    """Load a local file: one of our checkpoints, or a torchvision ImageNet state dict."""
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, Mapping) and loaded.get("format") == CHECKPOINT_FORMAT:
        if loaded.get("arch") != arch:
            raise CheckpointError(f"{path}: arch {loaded.get('arch')!r} does not match {arch!r}")
        backbone_state = {
            k.removeprefix("backbone."): v
            for k, v in loaded["model"].items()
            if k.startswith("backbone.")
        }
        source = "WBC checkpoint (backbone only)"
    elif isinstance(loaded, Mapping):
        state = loaded.get("state_dict", loaded)
        backbone_state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        source = "ImageNet state dict (fc dropped)"
    else:
        raise CheckpointError(f"{path}: not a state dict or a WBC checkpoint")
    try:
        model.backbone.load_state_dict(backbone_state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {arch}: {exc}") from None
    logger.info("%s backbone loaded from %s (%s)", arch, path, source)


def build_classifier(
    arch: str = DEFAULT_ARCH,
    num_classes: int = len(taxonomy.CODES),
    weights: str | Path | None = None,
) -> WBCClassifier:
    """Build a ResNet classifier with a ``num_classes``-way head.

    ``weights``: ``None`` for random initialisation (logged), ``"imagenet"`` for
    torchvision's ImageNet weights (from its cache, downloading only where the machine has
    internet), or the path of a local file (a torchvision state dict or a WBC checkpoint,
    of which the backbone is used). The head is always freshly initialised; use
    ``model_from_checkpoint`` to restore a trained head.
    """
    _check_arch(arch)
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if weights == "imagenet":
        enum = torchvision.models.get_model_weights(arch)
        try:
            backbone = torchvision.models.get_model(arch, weights=enum.DEFAULT)
        except Exception as exc:  # no cache and no network, most likely
            raise RuntimeError(
                f"could not load torchvision ImageNet weights for {arch} ({exc}); "
                "pass a local weights file instead"
            ) from exc
        logger.info("%s backbone: torchvision ImageNet weights %s", arch, enum.DEFAULT)
        return WBCClassifier(backbone, num_classes)
    model = WBCClassifier(torchvision.models.get_model(arch, weights=None), num_classes)
    if weights is None:
        logger.warning("%s backbone starts from random initialisation (no weights given)", arch)
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        _load_weights_file(model, path, arch)
    return model


class Checkpoint(TypedDict):
    """What a checkpoint file holds. Only builtins and tensors, for ``weights_only``."""

    format: str
    model: dict[str, torch.Tensor]
    arch: str
    class_codes: list[str]
    input_size: int
    mean: list[float]
    std: list[float]
    temperature: float
    args: dict[str, Any]
    metrics: dict[str, Any]


def make_checkpoint(
    model: WBCClassifier,
    *,
    arch: str,
    class_codes: Sequence[str] = taxonomy.CODES,
    input_size: int = DEFAULT_INPUT_SIZE,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    temperature: float = 1.0,
    args: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Checkpoint:
    _check_arch(arch)
    if len(class_codes) != model.num_classes:
        raise CheckpointError(f"{len(class_codes)} class codes for a {model.num_classes}-way head")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return Checkpoint(
        format=CHECKPOINT_FORMAT,
        model=state,
        arch=arch,
        class_codes=list(class_codes),
        input_size=int(input_size),
        mean=[float(m) for m in mean],
        std=[float(s) for s in std],
        temperature=float(temperature),
        args=dict(args or {}),
        metrics=dict(metrics or {}),
    )


def save_checkpoint(checkpoint: Checkpoint, path: str | Path) -> Path:
    """Write atomically (temporary file, then rename) so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(dict(checkpoint), tmp)
    tmp.replace(path)
    return path


def validate_checkpoint(
    checkpoint: Mapping[str, Any],
    *,
    arch: str | None = None,
    class_codes: Sequence[str] | None = taxonomy.CODES,
) -> Checkpoint:
    """Check structure and, when given, that arch and class list match; return it typed."""
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"not a WBC classifier checkpoint (format {checkpoint.get('format')!r}, "
            f"expected {CHECKPOINT_FORMAT!r})"
        )
    missing = set(Checkpoint.__annotations__) - set(checkpoint)
    if missing:
        raise CheckpointError(f"checkpoint lacks key(s) {', '.join(sorted(missing))}")
    if arch is not None and checkpoint["arch"] != arch:
        raise CheckpointError(
            f"checkpoint arch {checkpoint['arch']!r} does not match expected {arch!r}"
        )
    if class_codes is not None and list(checkpoint["class_codes"]) != list(class_codes):
        raise CheckpointError(
            "checkpoint classes do not match: it has "
            f"{' '.join(checkpoint['class_codes'])}, expected {' '.join(class_codes)}"
        )
    if not checkpoint["temperature"] > 0:
        raise CheckpointError(f"temperature must be positive, got {checkpoint['temperature']}")
    return checkpoint  # type: ignore[return-value]


def load_checkpoint(
    source: str | Path | Mapping[str, Any],
    *,
    arch: str | None = None,
    class_codes: Sequence[str] | None = taxonomy.CODES,
) -> Checkpoint:
    """Load (``weights_only=True``, onto the CPU) and validate a checkpoint."""
    if isinstance(source, Mapping):
        loaded: Any = source
    else:
        loaded = torch.load(Path(source), map_location="cpu", weights_only=True)
        if not isinstance(loaded, Mapping):
            raise CheckpointError(f"{source}: not a checkpoint dict")
    return validate_checkpoint(loaded, arch=arch, class_codes=class_codes)


def model_from_checkpoint(checkpoint: Checkpoint) -> WBCClassifier:
    """Rebuild the model (in eval mode) with the checkpoint's weights."""
    with torch.device("meta"):  # skip a pointless random initialisation of ~60M weights
        model = WBCClassifier(
            torchvision.models.get_model(checkpoint["arch"], weights=None),
            len(checkpoint["class_codes"]),
        )
    try:
        model.load_state_dict(checkpoint["model"], strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not fit its arch: {exc}") from None
    return model.eval()


def checkpoint_crop(checkpoint: Checkpoint) -> float:
    """The centre crop the checkpoint was trained with (its training ``args``; 1.0 for
    checkpoints made before the flag existed, which saw the whole image)."""
    return check_crop(checkpoint["args"].get("crop", DEFAULT_CROP))


def checkpoint_tta(checkpoint: Checkpoint) -> str:
    """The test-time augmentation the checkpoint was calibrated and evaluated with
    ("none" for checkpoints made before the flag existed)."""
    return check_tta(checkpoint["args"].get("tta", DEFAULT_TTA))


def preset_from_checkpoint(checkpoint: Checkpoint) -> EvalPreset:
    """The exact eval transform the checkpoint was trained and calibrated with."""
    return EvalPreset(
        checkpoint["input_size"],
        checkpoint["mean"],
        checkpoint["std"],
        checkpoint_crop(checkpoint),
        checkpoint_tta(checkpoint),
    )
