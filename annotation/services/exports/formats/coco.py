"""The COCO format: ``annotations.json`` (COCO detection) and ``images/``.

Categories are the 14 classes (id = taxonomy position + 1). One annotation per labelled
cell: ``segmentation`` is the WBC mask and ``nucleus_segmentation`` the nucleus, read
with the thresholds of :mod:`mlworker.segmentation.masks`, both as *uncompressed* RLE
(``{"size": [h, w], "counts": [ints]}``, column-major, as pycocotools). ``bbox`` and
``area`` are pycocotools' own for the WBC mask; a cell without a usable segmentation gets
the whole image as its box and an empty ``segmentation``. ``attributes`` carries the
provenance.

Why uncompressed: the published format (API README, the zip's README) promises plain
run lengths that any reader can decode without pycocotools. pycocotools encodes only to
its compressed string form, so ``rle_encode`` keeps the few lines that count runs, and
the tests check it against ``pycocotools.mask`` (decode round trip, same compressed
string).
"""

from __future__ import annotations

import json
import logging
import zipfile
from datetime import datetime
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from annotation.models import CellImage
from annotation.services.exports.filters import ExportFilters
from annotation.services.exports.formats.base import (
    FormatWriter,
    image_name,
    image_write,
    zip_entry,
)
from mlworker.segmentation.masks import wbc_and_nucleus
from mlworker.taxonomy import CLASSES, CODES

logger = logging.getLogger(__name__)


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """Uncompressed COCO RLE of a 2-D boolean mask: run lengths over the column-major
    (Fortran-order) pixels, starting with a run of zeros (possibly empty)."""
    height, width = mask.shape
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return {"size": [height, width], "counts": []}
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": [height, width], "counts": counts}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """The boolean mask of an uncompressed COCO RLE, decoded by pycocotools."""
    height, width = rle["size"]
    compressed = coco_mask.frPyObjects(rle, height, width)
    return np.asarray(coco_mask.decode(compressed), dtype=bool)


def _compressed(mask: np.ndarray) -> dict[str, Any]:
    return coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))  # type: ignore[no-any-return]


def _mask_of(cell: CellImage) -> np.ndarray | None:
    segs = list(cell.segmentations.all())  # prefetched, newest first
    if not segs:
        return None
    try:
        with segs[0].mask.open("rb") as fh, Image.open(fh) as im:
            return np.asarray(im.convert("L"))
    except (OSError, ValueError) as exc:
        logger.warning("mask of cell %s unreadable: %s", cell.pk, exc)
        return None


def coco_annotation(cell: CellImage, code: str, row: dict[str, Any]) -> dict[str, Any]:
    """The COCO annotation of a labelled cell, with its masks when it has a usable one."""
    mask = _mask_of(cell)
    annotation: dict[str, Any] = {
        "id": cell.pk,
        "image_id": cell.pk,
        "category_id": CODES.index(code) + 1,
        "iscrowd": 0,
        "attributes": {k: v for k, v in row.items() if k not in {"width", "height"}},
    }
    if mask is None or mask.shape != (cell.height, cell.width):
        annotation.update(
            segmentation=[],
            nucleus_segmentation=None,
            bbox=[0, 0, cell.width, cell.height],
            area=cell.width * cell.height,
            mask_source="none",
        )
        return annotation
    wbc, nucleus = wbc_and_nucleus(mask)
    compressed = _compressed(wbc)
    annotation.update(
        segmentation=rle_encode(wbc),
        nucleus_segmentation=rle_encode(nucleus),
        bbox=[int(v) for v in coco_mask.toBbox(compressed)],
        area=int(coco_mask.area(compressed)),
        mask_source="segmentation",
    )
    return annotation


class CocoFormat(FormatWriter):
    files_doc = (
        "`annotations.json` (COCO) and `images/`. `segmentation` is the WBC mask, "
        "`nucleus_segmentation` the nucleus, both uncompressed RLE (column-major, as "
        "pycocotools); `attributes` holds the provenance."
    )
    needs_masks = True

    def __init__(self) -> None:
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add(self, zf: zipfile.ZipFile, cell: CellImage, *, code: str, row: dict[str, Any]) -> None:
        path = f"images/{image_name(cell)}"
        image_write(zf, cell, path=path)
        self.images.append(
            {
                "id": cell.pk,
                "file_name": path,
                "width": cell.width,
                "height": cell.height,
                "sha256": cell.sha256,
                "case_accession": cell.case.accession_id,
            }
        )
        if code:
            self.annotations.append(coco_annotation(cell, code, row))

    def finish(self, zf: zipfile.ZipFile, *, now: datetime, filters: ExportFilters) -> None:
        document = {
            "info": {
                "description": "WBC portal export",
                "date_created": now.isoformat(),
                "filters": filters.as_params(),
            },
            "images": self.images,
            "categories": [
                {
                    "id": i + 1,
                    "name": cls.code,
                    "full_name": cls.name,
                    "supercategory": cls.group,
                }
                for i, cls in enumerate(CLASSES)
            ],
            "annotations": self.annotations,
        }
        zf.writestr(zip_entry("annotations.json", now, compress=True), json.dumps(document))
