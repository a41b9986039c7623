"""Image transforms shared by training, calibration, evaluation and scoring.

Every preset works on decoded uint8 RGB tensors (C, H, W) on any device: PIL images are
converted to tensors first. That way the CPU path (decode in DataLoader workers) and the
GPU path (``torchvision.io.decode_jpeg`` on the device) run the same resize and the same
normalisation, and training and scoring can never disagree about the model's input.

The analyser's crops are 360x363 and nearly square, with the white cell near the centre
and red cells around it. By default they are resized to ``input_size`` x ``input_size``
(default 224) without cropping. ``crop`` < 1 first keeps the central square of that
fraction of the shorter side: at a small input size (a CPU run) the cell then gets
(1 / crop)^2 times more pixels for the same compute. The crop is part of the preset, and
the checkpoint records it (``preset_from_checkpoint``), so scoring crops exactly as
training did.

Input scaling depends on the backbone's pretraining: ImageNet's mean and std for the
torchvision ResNets, ``(x - 127) / 128`` on 0-255 pixels for EfficientNet-Lite (its
TensorFlow training recipe, chosen there for quantisation). Both are a mean and std on
[0, 1] pixels (``INPUT_SCALINGS``); the checkpoint records the pair training used and
scoring normalises with it (``preset_from_checkpoint``), so the two cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# (x / 255 - 127 / 255) / (128 / 255) == (x - 127) / 128: TensorFlow's EfficientNet-Lite
# MEAN_RGB / STDDEV_RGB, as a mean and std on [0, 1] pixels
TFLITE_MEAN: tuple[float, float, float] = (127 / 255,) * 3
TFLITE_STD: tuple[float, float, float] = (128 / 255,) * 3
INPUT_SCALINGS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "tflite": (TFLITE_MEAN, TFLITE_STD),
}
DEFAULT_INPUT_SIZE = 224
DEFAULT_CROP = 1.0
# Test-time augmentation: the model's logits averaged over symmetric views of the image
# (cells have no orientation). "flips": identity, both mirrors and the half turn (4 views);
# "dihedral": the 8 symmetries of the square (those 4 and their transposes).
TTA_MODES: tuple[str, ...] = ("none", "flips", "dihedral")
DEFAULT_TTA = "none"


def normalization(
    scaling: str,
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) of a named input scaling (``model.input_scaling(arch)`` names it)."""
    if scaling not in INPUT_SCALINGS:
        raise ValueError(
            f"input scaling must be one of {', '.join(INPUT_SCALINGS)}, got {scaling!r}"
        )
    return INPUT_SCALINGS[scaling]


def check_crop(crop: float) -> float:
    """``crop`` as a float, or a ValueError saying what is allowed."""
    crop = float(crop)
    if not 0.1 <= crop <= 1.0:
        raise ValueError(
            f"crop must be between 0.1 and 1 (the kept share of the shorter side; "
            f"1 keeps the whole image), got {crop}"
        )
    return crop


def check_tta(tta: str) -> str:
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    return tta


def tta_views(batch: torch.Tensor, tta: str) -> list[torch.Tensor]:
    """The views of a square (N, C, S, S) batch that ``tta`` averages over, identity first."""
    check_tta(tta)
    if tta == "none":
        return [batch]
    h, w = batch.dim() - 2, batch.dim() - 1
    views = [batch, batch.flip(w), batch.flip(h), batch.flip((h, w))]
    if tta == "dihedral":
        views += [view.transpose(h, w) for view in views]
    memory_format = (
        torch.channels_last
        if batch.dim() == 4 and batch.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )
    return [view.contiguous(memory_format=memory_format) for view in views]


def center_crop_box(height: int, width: int, crop: float) -> tuple[int, int, int]:
    """(top, left, side) of the central square keeping ``crop`` of the shorter side."""
    side = max(1, round(min(height, width) * crop))
    return (height - side) // 2, (width - side) // 2, side


def to_uint8_tensor(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """Return an RGB uint8 (3, H, W) tensor for a PIL image or a decoded tensor."""
    if isinstance(image, Image.Image):
        return F.pil_to_tensor(image.convert("RGB"))
    tensor = image
    if tensor.dim() != 3:
        raise ValueError(f"expected a (C, H, W) image tensor, got shape {tuple(tensor.shape)}")
    if tensor.dtype != torch.uint8:
        if not tensor.is_floating_point():
            raise ValueError(f"unsupported image dtype {tensor.dtype}")
        tensor = (tensor.clamp(0, 1) * 255).round().to(torch.uint8)
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    elif tensor.shape[0] == 4:
        tensor = tensor[:3]
    if tensor.shape[0] != 3:
        raise ValueError(f"expected 1, 3 or 4 channels, got {tensor.shape[0]}")
    return tensor


class EvalPreset:
    """Resize to a square input and normalise: the model's view of an image at inference."""

    def __init__(
        self,
        input_size: int = DEFAULT_INPUT_SIZE,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        crop: float = DEFAULT_CROP,
        tta: str = DEFAULT_TTA,
    ) -> None:
        self.input_size = input_size
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.crop = check_crop(crop)
        self.tta = check_tta(tta)  # applied where the model runs (tta_views), not here

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, H, W) -> uint8 (..., 3, S, S); batched when given a batch.

        With ``crop`` < 1 the central square is cut out first (same box for every image
        of a batch: they share H and W).
        """
        if self.crop < 1.0:
            top, left, side = center_crop_box(image.shape[-2], image.shape[-1], self.crop)
            image = image[..., top : top + side, left : left + side]
        return F.resize(image, [self.input_size, self.input_size], antialias=True)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, S, S) -> normalised float32, on whatever device ``batch`` is."""
        return F.normalize(batch.to(torch.float32).div_(255.0), self.mean, self.std)

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        return self.normalize(self.resize(to_uint8_tensor(image)))


# Ruifrok & Johnston's stain vectors (haematoxylin, eosin, DAB), rows in optical density,
# as in scikit-image's ``rgb_from_hed``.
RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float32
)
RGB_FROM_HED = RGB_FROM_HED / RGB_FROM_HED.norm(dim=1, keepdim=True)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)


def stain_jitter(
    image: torch.Tensor, sigma: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Perturb each stain's amount: uint8 (3, H, W) -> uint8, same shape.

    The image is taken to optical density and unmixed into haematoxylin, eosin and a
    residual channel; each is scaled by U(1 - sigma, 1 + sigma) and shifted by
    U(-sigma, sigma) before mixing back (Tellez et al. 2018, "HED" augmentation). Unlike
    a brightness/hue jitter this changes nuclei and cytoplasm/granules independently, as a
    different staining protocol or scanner does.
    """
    channels, height, width = image.shape
    od = -torch.log(image.reshape(channels, -1).to(torch.float32).add_(1.0).div_(256.0))
    alpha = 1 + (torch.rand(3, 1, generator=generator) * 2 - 1) * sigma
    beta = (torch.rand(3, 1, generator=generator) * 2 - 1) * sigma
    # od (3, N) -> stains (3, N) -> perturbed -> od; one 3x3 matrix does unmix + remix
    mix = RGB_FROM_HED.T @ (alpha * HED_FROM_RGB.T)
    od = (mix @ od).add_(RGB_FROM_HED.T @ beta).clamp_min_(0)
    out = od.neg_().exp_().mul_(256.0).sub_(1.0).round_().clamp_(0, 255).to(torch.uint8)
    return out.reshape(channels, height, width)


class TrainPreset(EvalPreset):
    """Eval preset plus the augmentations that make sense for single-cell crops.

    Cells have no canonical orientation, so flips and 90 degree rotations are label
    preserving; a small colour jitter covers stain and scanner variation, and
    ``stain_jitter`` (HED) the amount of each stain.
    """

    def __init__(
        self,
        input_size: int = DEFAULT_INPUT_SIZE,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        hflip_prob: float = 0.5,
        vflip_prob: float = 0.5,
        rotate90: bool = True,
        color_jitter: float = 0.1,
        crop: float = DEFAULT_CROP,
        stain_jitter: float = 0.0,
    ) -> None:
        super().__init__(input_size, mean, std, crop)
        if not 0 <= stain_jitter < 1:
            raise ValueError(f"stain_jitter must be in [0, 1), got {stain_jitter}")
        self.stain_jitter = stain_jitter
        augment: list[v2.Transform] = []
        if hflip_prob > 0:
            augment.append(v2.RandomHorizontalFlip(hflip_prob))
        if vflip_prob > 0:
            augment.append(v2.RandomVerticalFlip(vflip_prob))
        if color_jitter > 0:
            augment.append(
                v2.ColorJitter(
                    brightness=color_jitter,
                    contrast=color_jitter,
                    saturation=color_jitter,
                    hue=color_jitter / 4,
                )
            )
        self.augment = v2.Compose(augment) if augment else v2.Identity()
        self.rotate90 = rotate90
        self.hflip_prob, self.vflip_prob = hflip_prob, vflip_prob
        self.color_jitter = color_jitter

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        return self.augment_resized(self.resize(to_uint8_tensor(image)))

    def augment_batch(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Augment and normalise a batch of resized uint8 images (N, 3, S, S) at once.

        The same augmentations as ``augment_resized``, drawn independently per image, as
        whole-batch tensor operations: a per-image Python loop cost about 1.4 ms an image
        (96 px), a sixth of a ResNet-18 training step at 64 px on two threads. Flips and
        quarter turns are exact; the stain jitter stays in float (no uint8 rounding
        between steps) and the colour jitter applies brightness, contrast, saturation and
        hue in that fixed order, hue as a rotation of the YIQ chroma plane. ``images`` is
        not modified (a cache can be passed in directly).
        """
        if images.dim() != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"expected uint8 (N, 3, S, S) images, got {tuple(images.shape)}")
        n = images.shape[0]

        def draw(*shape: int) -> torch.Tensor:
            return torch.rand(shape, generator=generator)

        x = images
        if self.hflip_prob > 0:
            x = torch.where((draw(n) < self.hflip_prob).view(n, 1, 1, 1), x.flip(-1), x)
        if self.vflip_prob > 0:
            x = torch.where((draw(n) < self.vflip_prob).view(n, 1, 1, 1), x.flip(-2), x)
        if self.rotate90:
            turns = torch.randint(0, 4, (n,), generator=generator)
            if x is images:
                x = x.clone()
            for k in (1, 2, 3):
                chosen = (turns == k).nonzero().flatten()
                if len(chosen):
                    x[chosen] = torch.rot90(x[chosen], k, dims=(-2, -1))
        out = x.to(torch.float32).div_(255.0)
        if self.stain_jitter > 0:
            out = _stain_jitter_batch(out, self.stain_jitter, draw)
        if self.color_jitter > 0:
            out = _color_jitter_batch(out, self.color_jitter, draw)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return out.sub_(mean).div_(std)

    def augment_resized(self, tensor: torch.Tensor) -> torch.Tensor:
        """Augment and normalise an image that ``resize`` has already produced (a cache)."""
        if self.rotate90:
            quarter_turns = int(torch.randint(0, 4, ()).item())
            tensor = torch.rot90(tensor, quarter_turns, dims=(1, 2))
        if self.stain_jitter > 0:
            tensor = stain_jitter(tensor, self.stain_jitter)
        tensor = self.augment(tensor)
        return self.normalize(tensor)


# YIQ: luma and two chroma axes; a hue shift is a rotation of the (I, Q) plane.
_YIQ_FROM_RGB = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float32
)
_RGB_FROM_YIQ = torch.linalg.inv(_YIQ_FROM_RGB)
_LUMA = _YIQ_FROM_RGB[0].view(1, 3, 1, 1)


def _stain_jitter_batch(
    batch: torch.Tensor, sigma: float, draw: Callable[..., torch.Tensor]
) -> torch.Tensor:
    """``stain_jitter`` for a float (N, 3, H, W) batch in [0, 1], one draw per image."""
    n, channels, height, width = batch.shape
    od = -torch.log(batch.reshape(n, channels, -1).mul(255.0).add_(1.0).div_(256.0))
    alpha = 1 + (draw(n, 3, 1) * 2 - 1) * sigma
    beta = (draw(n, 3, 1) * 2 - 1) * sigma
    mix = RGB_FROM_HED.T @ (alpha * HED_FROM_RGB.T)  # (N, 3, 3)
    od = torch.baddbmm(RGB_FROM_HED.T @ beta, mix, od).clamp_min_(0)
    out = od.neg_().exp_().mul_(256.0).sub_(1.0).div_(255.0).clamp_(0, 1)
    return out.reshape(n, channels, height, width)


def _color_jitter_batch(
    batch: torch.Tensor, strength: float, draw: Callable[..., torch.Tensor]
) -> torch.Tensor:
    """Brightness, contrast, saturation (factors in 1 ± strength) and hue (± strength/4 of
    a turn) for a float (N, 3, H, W) batch in [0, 1], one draw per image and property."""
    n = batch.shape[0]

    def factor() -> torch.Tensor:
        return (1 + (draw(n) * 2 - 1) * strength).view(n, 1, 1, 1)

    out = batch.mul(factor()).clamp_(0, 1)
    gray_mean = (out * _LUMA).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    c = factor()
    out = out.mul_(c).add_(gray_mean * (1 - c)).clamp_(0, 1)
    s = factor()
    gray = (out * _LUMA).sum(1, keepdim=True)
    out = out.mul_(s).add_(gray.mul_(1 - s)).clamp_(0, 1)
    angle = (draw(n) * 2 - 1) * (strength / 4) * 2 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.zeros(n, 3, 3)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
    rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
    hue = _RGB_FROM_YIQ @ rotation @ _YIQ_FROM_RGB  # (N, 3, 3)
    flat = out.reshape(n, 3, -1)
    return torch.bmm(hue, flat).clamp_(0, 1).reshape_as(out)
