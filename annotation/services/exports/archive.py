"""Building the export zip: one loop over the cells for every format, streamed to an
HTTP response or written to a file by the export job."""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from django.utils import timezone

from annotation.services.exports.filters import ExportFilters, export_cells
from annotation.services.exports.formats import export_format_check
from annotation.services.exports.formats.base import zip_entry
from annotation.services.exports.provenance import cells_with_provenance, provenance_row
from annotation.services.exports.readme import export_readme

CHUNK = 500
ProgressFn = Callable[[int, int], None]


def export_zip_write(
    zf: zipfile.ZipFile,
    *,
    fmt: str,
    filters: ExportFilters,
    progress: ProgressFn | None = None,
) -> Iterator[None]:
    """Write the export into ``zf``, yielding after each cell so a caller can stream.

    ``progress(done, total)`` is called every 100 cells and at the last one.
    """
    writer = export_format_check(fmt)()
    cells = cells_with_provenance(export_cells(filters=filters), masks=writer.needs_masks)
    total = cells.count()
    now = timezone.now()
    counts: Counter[str] = Counter()
    for done, cell in enumerate(cells.iterator(chunk_size=CHUNK), start=1):
        code = cell.current_label.code if cell.current_label else ""
        counts[code] += 1
        writer.add(zf, cell, code=code, row=provenance_row(cell))
        if progress is not None and (done % 100 == 0 or done == total):
            progress(done, total)
        yield
    writer.finish(zf, now=now, filters=filters)
    readme = export_readme(fmt=fmt, files_doc=writer.files_doc, filters=filters, counts=counts)
    zf.writestr(zip_entry("README.md", now, compress=True), readme)
    yield


class _StreamSink(io.RawIOBase):
    """A write-only, non-seekable file whose bytes are taken out as they arrive, so
    zipfile writes a streamable archive (local headers with data descriptors)."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._chunks.append(chunk)
        self.size += len(chunk)
        return len(chunk)

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        self.size = 0
        return data


def export_stream(
    *, fmt: str, filters: ExportFilters, chunk_bytes: int = 256 * 1024
) -> Iterator[bytes]:
    """The export as a zip, yielded in pieces of about ``chunk_bytes`` while it is made."""
    sink = _StreamSink()
    with zipfile.ZipFile(sink, "w") as zf:
        for _ in export_zip_write(zf, fmt=fmt, filters=filters):
            if sink.size >= chunk_bytes:
                yield sink.take()
    tail = sink.take()  # the central directory, written when the zip closes
    if tail:
        yield tail


def export_filename(fmt: str) -> str:
    """The download's file name: the format and the time it was made."""
    return f"wbc-export-{fmt}-{timezone.now():%Y%m%d-%H%M%S}.zip"
