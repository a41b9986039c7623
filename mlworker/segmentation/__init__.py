"""Segmentation of a white blood cell image into WBC and nucleus masks.

Plain Python on scikit-image/SciPy, no Django; see ``mlworker/segmentation.md``.
"""

from mlworker.segmentation.imageio import (
    ImageFormatError,
    decode_label_png,
    encode_label_png,
    read_image,
    to_rgb_uint8,
)
from mlworker.segmentation.segment import SegmentationParams, SegmentationResult, segment_cell

__all__ = [
    "ImageFormatError",
    "SegmentationParams",
    "SegmentationResult",
    "decode_label_png",
    "encode_label_png",
    "read_image",
    "segment_cell",
    "to_rgb_uint8",
]
