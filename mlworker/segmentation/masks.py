"""The one definition of a segmentation mask: its pixel codes and how to read it back.

A mask is one 8-bit grayscale image like the expert masks: 0 background, 128 cytoplasm,
255 nucleus. Everything that writes a mask (the segmenter) or reads one (evaluation, the
COCO export) uses these names, so that a mask cannot mean one thing to the exporter and
another to the evaluator.

Reading is done with thresholds half-way between the codes rather than by equality, so
that a mask that went through a lossy resize or a JPEG-ish round trip still decodes to the
same regions: anything from 64 up is the white cell, anything from 192 up its nucleus.
"""

from __future__ import annotations

import numpy as np

# Pixel codes of the three regions.
BACKGROUND = 0
CYTOPLASM = 128
NUCLEUS = 255

# Thresholds to read a mask: half-way between background/cytoplasm and cytoplasm/nucleus.
WBC_THRESHOLD = 64
NUCLEUS_THRESHOLD = 192


def wbc_and_nucleus(mask_array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a label image into ``(wbc_mask, nucleus_mask)`` boolean arrays.

    The nucleus lies inside the cell by construction (192 >= 64), so callers can rely on
    ``nucleus_mask <= wbc_mask`` without checking it.
    """
    labels = np.asarray(mask_array)
    return labels >= WBC_THRESHOLD, labels >= NUCLEUS_THRESHOLD


def label_image(wbc_mask: np.ndarray, nucleus_mask: np.ndarray) -> np.ndarray:
    """Combine the two boolean masks into one uint8 label image: 0 / 128 / 255."""
    labels = np.full(wbc_mask.shape, BACKGROUND, dtype=np.uint8)
    labels[wbc_mask] = CYTOPLASM
    labels[nucleus_mask & wbc_mask] = NUCLEUS
    return labels
