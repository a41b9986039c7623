"""The one definition of a mask's codes and how to read them back."""

from __future__ import annotations

import numpy as np

from mlworker.segmentation.imageio import decode_label_png, encode_label_png
from mlworker.segmentation.masks import (
    BACKGROUND,
    CYTOPLASM,
    NUCLEUS,
    label_image,
    wbc_and_nucleus,
)


def test_thresholds_read_the_codes_and_tolerate_lossy_values() -> None:
    mask = np.array([[BACKGROUND, 40, 70, CYTOPLASM], [180, 200, NUCLEUS, 250]], dtype=np.uint8)
    wbc, nucleus = wbc_and_nucleus(mask)
    assert wbc.tolist() == [[False, False, True, True], [True, True, True, True]]
    assert nucleus.tolist() == [[False, False, False, False], [False, True, True, True]]
    assert not (nucleus & ~wbc).any()  # the nucleus is always inside the cell


def test_label_png_round_trip() -> None:
    wbc = np.zeros((20, 20), bool)
    wbc[4:16, 4:16] = True
    nucleus = np.zeros_like(wbc)
    nucleus[8:12, 8:12] = True
    assert set(np.unique(label_image(wbc, nucleus))) == {BACKGROUND, CYTOPLASM, NUCLEUS}
    back_wbc, back_nucleus = decode_label_png(encode_label_png(wbc, nucleus))
    assert (back_wbc == wbc).all() and (back_nucleus == nucleus).all()
