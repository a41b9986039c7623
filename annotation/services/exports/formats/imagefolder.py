"""The imagefolder format: ``<CODE>/<sha256>.<ext>`` per cell and ``manifest.csv``.

The manifest starts with import_cells' columns (``path,diff14,source_label,patient``;
``patient`` is the case's accession id), so ``manage.py import_cells`` reads the export
back as the same cells, cases and labels; the provenance columns follow.
"""

from __future__ import annotations

import zipfile
from datetime import datetime
from typing import Any

from annotation.models import CellImage
from annotation.services.exports.filters import ExportFilters
from annotation.services.exports.formats.base import (
    FormatWriter,
    image_name,
    image_write,
    zip_entry,
)
from annotation.services.exports.formats.csv import CsvTable
from annotation.services.exports.provenance import PROVENANCE_COLUMNS

UNLABELLED_DIR = "unlabelled"
MANIFEST_COLUMNS = ["path", "diff14", "source_label", "patient", *PROVENANCE_COLUMNS]


class ImageFolderFormat(FormatWriter):
    files_doc = (
        "`<CODE>/<sha256>.<ext>` per labelled cell, `unlabelled/` for the "
        "rest, and `manifest.csv`. Re-import with `manage.py import_cells <this zip>`: "
        "`path,diff14,source_label,patient` are the import columns (`patient` is the "
        "case's accession id)."
    )

    def __init__(self) -> None:
        self.manifest = CsvTable(MANIFEST_COLUMNS)

    def add(self, zf: zipfile.ZipFile, cell: CellImage, *, code: str, row: dict[str, Any]) -> None:
        path = f"{code or UNLABELLED_DIR}/{image_name(cell)}"
        image_write(zf, cell, path=path)
        self.manifest.add(
            {
                "path": path,
                "diff14": code,
                "source_label": cell.source_class_name,
                "patient": cell.case.accession_id,
                **row,
            }
        )

    def finish(self, zf: zipfile.ZipFile, *, now: datetime, filters: ExportFilters) -> None:
        zf.writestr(zip_entry("manifest.csv", now, compress=True), self.manifest.text())
