"""Reading cell images into the one format the segmenter accepts, and mask storage.

The segmenter works on 8-bit RGB. Everything else is converted here, or refused with an
:class:`ImageFormatError` whose message says what was wrong, so that callers never see an
exception from deep inside scikit-image.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# The mask codes and thresholds live in masks.py; label_image is re-exported for callers.
from mlworker.segmentation.masks import label_image, wbc_and_nucleus

__all__ = [
    "ImageFormatError",
    "decode_label_png",
    "encode_label_png",
    "label_image",
    "read_image",
    "to_rgb_uint8",
]

MIN_SIDE = 16
MAX_SIDE = 4096


class ImageFormatError(ValueError):
    """The input cannot be segmented as given (wrong shape, grayscale, too small...)."""


def to_rgb_uint8(image: np.ndarray | Image.Image) -> np.ndarray:
    """Convert an image to an (H, W, 3) uint8 RGB array or raise :class:`ImageFormatError`.

    Accepted: 8- or 16-bit RGB, RGBA (composited on white, the colour of an empty slide),
    float RGB in 0..1, and PIL images in any colour mode. Refused: grayscale (the method
    depends on colour), images with an unusual number of channels, and images smaller than
    16 or larger than 4096 pixels on a side.
    """
    if isinstance(image, Image.Image):
        image = _pil_to_array(image)
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        raise ImageFormatError(
            f"grayscale image of shape {array.shape}: segmentation needs a colour (RGB) image"
        )
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ImageFormatError(
            f"image of shape {array.shape} is not RGB or RGBA (expected H x W x 3 or H x W x 4)"
        )
    height, width = array.shape[:2]
    if min(height, width) < MIN_SIDE or max(height, width) > MAX_SIDE:
        raise ImageFormatError(
            f"image of {width}x{height} pixels is outside {MIN_SIDE}..{MAX_SIDE} on a side"
        )
    rgb = _to_unit_float(array)
    if rgb.shape[2] == 4:
        alpha = rgb[..., 3:4]
        rgb = rgb[..., :3] * alpha + (1.0 - alpha)
    else:
        rgb = rgb[..., :3]
    return np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def _to_unit_float(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if array.dtype == np.bool_:
        raise ImageFormatError("boolean array is a mask, not a cell image")
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise ImageFormatError("float image contains NaN or infinite values")
        if array.min() < 0.0 or array.max() > 1.0:
            raise ImageFormatError("float image must have values in 0..1")
        return array.astype(np.float32)
    raise ImageFormatError(
        f"unsupported pixel type {array.dtype}: use uint8, uint16 or float in 0..1"
    )


def _pil_to_array(image: Image.Image) -> np.ndarray:
    if image.mode in ("RGB", "RGBA"):
        return np.asarray(image)
    if image.mode in ("L", "1", "LA"):
        return np.asarray(image.convert("L"))  # refused as grayscale by the caller
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        raise ImageFormatError(f"single-channel {image.mode} image: segmentation needs colour")
    if image.mode == "P":
        return np.asarray(image.convert("RGBA"))
    return np.asarray(image.convert("RGB"))


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB, raising :class:`ImageFormatError`."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb_uint8(image)
    except (OSError, Image.DecompressionBombError) as exc:
        raise ImageFormatError(f"cannot read image {path}: {exc}") from exc


def encode_label_png(wbc_mask: np.ndarray, nucleus_mask: np.ndarray) -> bytes:
    """Encode the masks as a single 8-bit grayscale PNG (0 / 128 / 255)."""
    buffer = io.BytesIO()
    Image.fromarray(label_image(wbc_mask, nucleus_mask), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def decode_label_png(data: bytes | str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode a label PNG (bytes or a path) into ``(wbc_mask, nucleus_mask)``.

    Values are read with the tolerant thresholds of :mod:`mlworker.segmentation.masks`, so
    that masks that went through a lossy resize still decode.
    """
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with Image.open(source) as image:
        labels = np.asarray(image.convert("L"))
    return wbc_and_nucleus(labels)
