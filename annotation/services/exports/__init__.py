"""Dataset exports: a zip in one of three formats, streamed or built by a Celery task.

Every zip holds README.md (the class list, counts, the filters used) and, per format
(each in ``formats/``):

- ``imagefolder``: ``<CODE>/<sha256>.<ext>`` per cell and ``manifest.csv``, which
  ``import_cells`` reads back as the same cells, cases and labels;
- ``csv``: ``cells.csv``, one row per cell, no images;
- ``coco``: ``annotations.json`` (COCO detection, masks as uncompressed RLE) and
  ``images/``.

The package, by concern: ``filters`` (which cells), ``provenance`` (label, annotator and
the model's suggestion at labelling time, for every cell), ``formats`` (one writer per
format), ``archive`` (the loop that writes a zip, streamed), ``readme``, and ``jobs``
(large exports as an ExportJob run by a Celery task). Callers import from here.
"""

from __future__ import annotations

from annotation.services.exports.archive import export_filename, export_stream
from annotation.services.exports.filters import (
    LABEL_STATUSES,
    ExportFilters,
    export_cells,
    export_count,
)
from annotation.services.exports.formats import FORMATS
from annotation.services.exports.formats.coco import rle_decode, rle_encode
from annotation.services.exports.jobs import (
    export_job_create,
    export_job_run,
    export_sync_limit,
)
from annotation.services.exports.provenance import PROVENANCE_COLUMNS, provenance_row

__all__ = [
    "FORMATS",
    "LABEL_STATUSES",
    "PROVENANCE_COLUMNS",
    "ExportFilters",
    "export_cells",
    "export_count",
    "export_filename",
    "export_job_create",
    "export_job_run",
    "export_stream",
    "export_sync_limit",
    "provenance_row",
    "rle_decode",
    "rle_encode",
]
