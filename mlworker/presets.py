"""Image transforms shared by training, calibration, evaluation and scoring.

Every preset works on decoded uint8 RGB tensors (C, H, W) on any device: PIL images are
converted to tensors first. That way the CPU path (decode in DataLoader workers) and the
GPU path (``torchvision.io.decode_jpeg`` on the device) run the same resize and the same
normalisation, and training and scoring can never disagree about the model's input.

The analyser's crops are 360x363 and nearly square: they are resized to
``input_size`` x ``input_size`` (default 224) without cropping, so no part of the cell
border is lost.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
DEFAULT_INPUT_SIZE = 224


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
    ) -> None:
        self.input_size = input_size
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, H, W) -> uint8 (..., 3, S, S); batched when given a batch."""
        return F.resize(image, [self.input_size, self.input_size], antialias=True)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, S, S) -> normalised float32, on whatever device ``batch`` is."""
        return F.normalize(batch.to(torch.float32).div_(255.0), self.mean, self.std)

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        return self.normalize(self.resize(to_uint8_tensor(image)))


class TrainPreset(EvalPreset):
    """Eval preset plus the augmentations that make sense for single-cell crops.

    Cells have no canonical orientation, so flips and 90 degree rotations are label
    preserving; a small colour jitter covers stain and scanner variation.
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
    ) -> None:
        super().__init__(input_size, mean, std)
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
        self.augment = v2.Compose(augment)
        self.rotate90 = rotate90

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        tensor = self.resize(to_uint8_tensor(image))
        if self.rotate90:
            quarter_turns = int(torch.randint(0, 4, ()).item())
            tensor = torch.rot90(tensor, quarter_turns, dims=(1, 2))
        tensor = self.augment(tensor)
        return self.normalize(tensor)
