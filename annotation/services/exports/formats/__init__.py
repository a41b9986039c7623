"""The export formats, by the name clients ask for; each writer lives in its own module."""

from __future__ import annotations

from annotation.errors import ApplicationError
from annotation.services.exports.formats.base import FormatWriter
from annotation.services.exports.formats.coco import CocoFormat
from annotation.services.exports.formats.csv import CsvFormat
from annotation.services.exports.formats.imagefolder import ImageFolderFormat

# In the order the API lists them (the first is its default).
WRITERS: dict[str, type[FormatWriter]] = {
    "imagefolder": ImageFolderFormat,
    "csv": CsvFormat,
    "coco": CocoFormat,
}
FORMATS = tuple(WRITERS)


def export_format_check(fmt: str) -> type[FormatWriter]:
    """The writer of ``fmt``, or a 400 that lists the formats there are."""
    try:
        return WRITERS[fmt]
    except KeyError:
        raise ApplicationError(
            f"Unknown export format {fmt!r}; use one of {', '.join(FORMATS)}.",
            fields={"format": "unknown"},
        ) from None
