"""What every export format shares: the writer interface and how files go into the zip."""

from __future__ import annotations

import zipfile
from abc import ABC, abstractmethod
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from django.utils import timezone

from annotation.models import CellImage
from annotation.services.exports.filters import ExportFilters


class FormatWriter(ABC):
    """One export format. The export loop (archive.py) hands it each cell in turn, then
    asks it to write its index files; a new instance serves one export.

    ``files_doc`` is the README's description of the files this format writes;
    ``needs_masks`` asks the loop to prefetch the cells' segmentations.
    """

    files_doc: ClassVar[str]
    needs_masks: ClassVar[bool] = False

    @abstractmethod
    def add(self, zf: zipfile.ZipFile, cell: CellImage, *, code: str, row: dict[str, Any]) -> None:
        """Write what ``cell`` contributes (``code`` is its label, "" if none; ``row`` its
        provenance)."""

    @abstractmethod
    def finish(self, zf: zipfile.ZipFile, *, now: datetime, filters: ExportFilters) -> None:
        """Write the files that list every cell (manifest, table, annotations)."""


def zip_entry(name: str, when: datetime, *, compress: bool) -> zipfile.ZipInfo:
    """A zip entry dated ``when`` in local time. Images are stored, not deflated: they
    are compressed already, and deflating them again only costs time."""
    info = zipfile.ZipInfo(name, date_time=timezone.localtime(when).timetuple()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


def image_name(cell: CellImage) -> str:
    """``<sha256>.<ext>``: unique per image, and what import_cells deduplicates on."""
    ext = Path(cell.image.name or "").suffix or ".jpg"
    return f"{cell.sha256}{ext}"


def image_write(zf: zipfile.ZipFile, cell: CellImage, *, path: str) -> None:
    """Copy the cell's stored image into the zip as ``path``."""
    with cell.image.open("rb") as fh:
        zf.writestr(zip_entry(path, cell.created_at, compress=False), fh.read())
