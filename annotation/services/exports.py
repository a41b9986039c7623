"""Dataset exports: a zip in one of three formats, streamed or built by a Celery task.

Formats (each zip also holds README.md: the class list, counts, the filters used):
- ``imagefolder``: ``<CODE>/<sha256>.<ext>`` per labelled cell (``unlabelled/`` for cells
  without a label) and ``manifest.csv``. The manifest has import_cells' columns
  (``path,diff14,source_label,patient``; ``patient`` holds the case's accession id) plus
  the provenance columns, so ``import_cells`` reads the export back as the same cells,
  cases and labels.
- ``csv``: ``cells.csv``, one row per cell with its current label and provenance; no
  images (``image_path`` names the stored file).
- ``coco``: ``annotations.json`` (COCO detection format) and ``images/``. Categories are
  the 14 classes (id = taxonomy position + 1). One annotation per labelled cell: its
  ``segmentation`` is the WBC mask (mask > 0) as uncompressed RLE, ``nucleus_segmentation``
  the nucleus (mask == 255), both column-major like pycocotools; ``bbox``/``area`` come from
  the WBC mask (the whole image when the cell has no segmentation, with ``segmentation``
  an empty list). ``attributes`` carries the provenance.

Provenance for every cell: label id, code and source, annotator, time of labelling, and
the model's suggestion at that time: the prediction of the model version that queued the
review item the label closed, otherwise the newest prediction made before the label.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Prefetch, Q, QuerySet
from django.utils import timezone
from PIL import Image

from annotation.errors import ApplicationError
from annotation.models import (
    CellImage,
    ExportJob,
    Label,
    Prediction,
    ReviewItem,
    Segmentation,
)
from annotation.types import UserLike
from mlworker.taxonomy import CLASSES, CODES

logger = logging.getLogger(__name__)

FORMATS = ("imagefolder", "csv", "coco")
LABEL_STATUSES = ("labelled", "unlabelled", "any")
UNLABELLED_DIR = "unlabelled"
PROVENANCE_COLUMNS = [
    "cell_id",
    "sha256",
    "case_accession",
    "case_diagnosis",
    "width",
    "height",
    "original_filename",
    "image_path",
    "has_label_conflict",
    "label_id",
    "label_source",
    "annotator",
    "labelled_at",
    "supersedes_label_id",
    "model_version",
    "model_suggestion",
    "model_confidence",
]
MANIFEST_COLUMNS = ["path", "diff14", "source_label", "patient", *PROVENANCE_COLUMNS]
CHUNK = 500
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class ExportFilters:
    case_id: int | None = None
    label: str | None = None
    label_source: str | None = None
    label_status: str = "labelled"
    since: datetime | None = None

    def as_params(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None}
        if self.since is not None:
            out["since"] = self.since.isoformat()
        return out

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ExportFilters:
        since = params.get("since")
        return cls(
            case_id=params.get("case_id"),
            label=params.get("label"),
            label_source=params.get("label_source"),
            label_status=params.get("label_status", "labelled"),
            since=datetime.fromisoformat(since) if since else None,
        )


def export_cells(*, filters: ExportFilters) -> QuerySet[CellImage]:
    qs = CellImage.objects.all()
    f = filters
    if f.case_id is not None:
        qs = qs.filter(case_id=f.case_id)
    if f.label_status == "labelled" or f.label or f.label_source:
        qs = qs.filter(current_label__isnull=False)
    elif f.label_status == "unlabelled":
        qs = qs.filter(current_label__isnull=True)
    if f.label:
        qs = qs.filter(current_label__code=f.label)
    if f.label_source:
        qs = qs.filter(current_label__source=f.label_source)
    if f.since is not None:
        qs = qs.filter(
            Q(current_label__created_at__gte=f.since)
            | Q(current_label__isnull=True, created_at__gte=f.since)
        )
    return qs.order_by("id")


def _with_provenance(qs: QuerySet[CellImage], *, masks: bool) -> QuerySet[CellImage]:
    prefetches: list[Any] = [
        Prefetch(
            "predictions",
            queryset=Prediction.objects.select_related("model_version")
            .only(
                "id",
                "cell_id",
                "top_code",
                "confidence",
                "created_at",
                "model_version__id",
                "model_version__name",
                "model_version__status",
            )
            .order_by("created_at", "id"),
        ),
        Prefetch(
            "review_items",
            queryset=ReviewItem.objects.filter(label__isnull=False).only(
                "id", "cell_id", "label_id", "model_version_id"
            ),
        ),
    ]
    if masks:
        prefetches.append(
            Prefetch(
                "segmentations",
                queryset=Segmentation.objects.filter(status="ok")
                .exclude(mask="")
                .order_by("-created_at", "-id"),
            )
        )
    return qs.select_related("case", "current_label__annotator").prefetch_related(*prefetches)


def _suggestion(cell: CellImage, label: Label | None) -> Prediction | None:
    predictions: list[Prediction] = list(cell.predictions.all())
    if label is None:
        return next((p for p in predictions if p.model_version.status == "active"), None)
    item = next((i for i in cell.review_items.all() if i.label_id == label.pk), None)
    if item is not None and item.model_version_id is not None:
        found = next((p for p in predictions if p.model_version_id == item.model_version_id), None)
        if found is not None:
            return found
    before = [p for p in predictions if p.created_at <= label.created_at]
    return before[-1] if before else None


def provenance_row(cell: CellImage) -> dict[str, Any]:
    label = cell.current_label
    suggestion = _suggestion(cell, label)
    return {
        "cell_id": cell.pk,
        "sha256": cell.sha256,
        "case_accession": cell.case.accession_id,
        "case_diagnosis": cell.case.diagnosis,
        "width": cell.width,
        "height": cell.height,
        "original_filename": cell.original_filename,
        "image_path": cell.image.name,
        "has_label_conflict": int(cell.has_label_conflict),
        "label_id": label.pk if label else "",
        "label_source": label.source if label else "",
        "annotator": label.annotator.username if label and label.annotator else "",
        "labelled_at": label.created_at.isoformat() if label else "",
        "supersedes_label_id": (label.supersedes_id or "") if label else "",
        "model_version": suggestion.model_version.name if suggestion else "",
        "model_suggestion": suggestion.top_code if suggestion else "",
        "model_confidence": round(suggestion.confidence, 6) if suggestion else "",
    }


# --- COCO run-length encoding --------------------------------------------------------------


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
    height, width = rle["size"]
    flat = np.zeros(height * width, dtype=bool)
    pos, value = 0, False
    for run in rle["counts"]:
        if value:
            flat[pos : pos + run] = True
        pos += run
        value = not value
    return flat.reshape((height, width), order="F")


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return [0, 0, 0, 0]
    x0, y0 = int(xs.min()), int(ys.min())
    return [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]


def _mask_of(cell: CellImage) -> np.ndarray | None:
    segs = list(cell.segmentations.all())
    if not segs:
        return None
    try:
        with segs[0].mask.open("rb") as fh, Image.open(fh) as im:
            return np.asarray(im.convert("L"))
    except (OSError, ValueError) as exc:
        logger.warning("mask of cell %s unreadable: %s", cell.pk, exc)
        return None


# --- the zip ------------------------------------------------------------------------------


def _info(name: str, when: datetime, *, compress: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=timezone.localtime(when).timetuple()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


def _image_name(cell: CellImage) -> str:
    ext = Path(cell.image.name or "").suffix or ".jpg"
    return f"{cell.sha256}{ext}"


def _readme(fmt: str, filters: ExportFilters, counts: Counter[str], n: int) -> str:
    lines = [
        f"# WBC portal export ({fmt})",
        "",
        f"Exported {timezone.now().isoformat()}; {n} cells.",
        "",
        "## Filters",
        "",
    ]
    params = filters.as_params()
    lines += [f"- {k}: {v}" for k, v in params.items()] or ["- none"]
    lines += [
        "",
        "## Classes (14-Diff)",
        "",
        "| code | class | group | cells |",
        "|---|---|---|---|",
    ]
    for cls in CLASSES:
        lines.append(f"| {cls.code} | {cls.name} | {cls.group} | {counts.get(cls.code, 0)} |")
    if counts.get(""):
        lines.append(f"| (none) | unlabelled | | {counts['']} |")
    lines += [
        "",
        "## Files",
        "",
        {
            "imagefolder": "`<CODE>/<sha256>.<ext>` per labelled cell, `unlabelled/` for the "
            "rest, and `manifest.csv`. Re-import with `manage.py import_cells <this zip>`: "
            "`path,diff14,source_label,patient` are the import columns (`patient` is the "
            "case's accession id).",
            "csv": "`cells.csv`: one row per cell with its current label.",
            "coco": "`annotations.json` (COCO) and `images/`. `segmentation` is the WBC mask, "
            "`nucleus_segmentation` the nucleus, both uncompressed RLE (column-major, as "
            "pycocotools); `attributes` holds the provenance.",
        }[fmt],
        "",
        "## Provenance columns",
        "",
        "label_id, label_source (imported / hematologist / adjudicated), annotator, "
        "labelled_at, supersedes_label_id: the current label and who gave it when. "
        "model_version, model_suggestion, model_confidence: what the model suggested at "
        "labelling time (the version that queued the cell for review, otherwise the newest "
        "prediction made before the label; for unlabelled cells the active model's).",
        "",
    ]
    return "\n".join(lines)


def _write_entries(
    zf: zipfile.ZipFile,
    *,
    fmt: str,
    filters: ExportFilters,
    progress: ProgressFn | None = None,
) -> Iterator[None]:
    """Write the export into ``zf``, yielding after each cell so a caller can stream."""
    if fmt not in FORMATS:
        raise ApplicationError(
            f"Unknown export format {fmt!r}; use one of {', '.join(FORMATS)}.",
            fields={"format": "unknown"},
        )
    cells = _with_provenance(export_cells(filters=filters), masks=fmt == "coco")
    total = cells.count()
    now = timezone.now()
    counts: Counter[str] = Counter()
    table = io.StringIO()
    columns = MANIFEST_COLUMNS if fmt == "imagefolder" else ["diff14", *PROVENANCE_COLUMNS]
    writer = csv.DictWriter(table, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    coco_images: list[dict[str, Any]] = []
    coco_annotations: list[dict[str, Any]] = []
    for done, cell in enumerate(cells.iterator(chunk_size=CHUNK), start=1):
        row = provenance_row(cell)
        code = cell.current_label.code if cell.current_label else ""
        counts[code] += 1
        if fmt == "imagefolder":
            path = f"{code or UNLABELLED_DIR}/{_image_name(cell)}"
            with cell.image.open("rb") as fh:
                zf.writestr(_info(path, cell.created_at, compress=False), fh.read())
            writer.writerow(
                {
                    "path": path,
                    "diff14": code,
                    "source_label": cell.source_class_name,
                    "patient": cell.case.accession_id,
                    **row,
                }
            )
        elif fmt == "csv":
            writer.writerow({"diff14": code, **row})
        else:
            path = f"images/{_image_name(cell)}"
            with cell.image.open("rb") as fh:
                zf.writestr(_info(path, cell.created_at, compress=False), fh.read())
            coco_images.append(
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
                coco_annotations.append(_coco_annotation(cell, code, row))
        if progress is not None and (done % 100 == 0 or done == total):
            progress(done, total)
        yield
    if fmt == "imagefolder":
        zf.writestr(_info("manifest.csv", now, compress=True), table.getvalue())
    elif fmt == "csv":
        zf.writestr(_info("cells.csv", now, compress=True), table.getvalue())
    else:
        document = {
            "info": {
                "description": "WBC portal export",
                "date_created": now.isoformat(),
                "filters": filters.as_params(),
            },
            "images": coco_images,
            "categories": [
                {
                    "id": i + 1,
                    "name": cls.code,
                    "full_name": cls.name,
                    "supercategory": cls.group,
                }
                for i, cls in enumerate(CLASSES)
            ],
            "annotations": coco_annotations,
        }
        zf.writestr(_info("annotations.json", now, compress=True), json.dumps(document))
    zf.writestr(
        _info("README.md", now, compress=True),
        _readme(fmt, filters, counts, sum(counts.values())),
    )
    yield


def _coco_annotation(cell: CellImage, code: str, row: dict[str, Any]) -> dict[str, Any]:
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
    wbc = mask > 0
    annotation.update(
        segmentation=rle_encode(wbc),
        nucleus_segmentation=rle_encode(mask == 255),
        bbox=_bbox(wbc),
        area=int(wbc.sum()),
        mask_source="segmentation",
    )
    return annotation


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
        for _ in _write_entries(zf, fmt=fmt, filters=filters):
            if sink.size >= chunk_bytes:
                yield sink.take()
    tail = sink.take()  # the central directory, written when the zip closes
    if tail:
        yield tail


def export_count(*, filters: ExportFilters) -> int:
    return export_cells(filters=filters).count()


def export_filename(fmt: str) -> str:
    return f"wbc-export-{fmt}-{timezone.now():%Y%m%d-%H%M%S}.zip"


# --- large exports: a Celery task ---------------------------------------------------------


def export_job_create(*, fmt: str, filters: ExportFilters, user: UserLike | None) -> ExportJob:
    """Record an export job and enqueue its task once the job row is committed."""
    from annotation.tasks import export_job_run_task

    if fmt not in FORMATS:
        raise ApplicationError(
            f"Unknown export format {fmt!r}; use one of {', '.join(FORMATS)}.",
            fields={"format": "unknown"},
        )
    with transaction.atomic():
        job = ExportJob.objects.create(
            format=fmt,
            params=filters.as_params(),
            requested_by=user,
            n_cells=export_count(filters=filters),
            progress={"done": 0, "total": 0, "percent": 0},
        )
        job_id = job.pk
        transaction.on_commit(lambda: export_job_run_task.delay(job_id))
    return job


def export_job_run(*, job_id: int) -> ExportJob:
    """Build the zip in a temporary file, then store it; idempotent (a finished job is
    left as it is), so a redelivered task does no harm."""
    job = ExportJob.objects.get(pk=job_id)
    if job.status == ExportJob.Status.SUCCEEDED:
        return job
    job.status = ExportJob.Status.RUNNING
    job.save(update_fields=["status"])
    filters = ExportFilters.from_params(job.params)

    def progress(done: int, total: int) -> None:
        job.progress = {
            "done": done,
            "total": total,
            "percent": round(100 * done / total, 1) if total else 100.0,
        }
        job.save(update_fields=["progress"])

    # Chosen before the write, so a write that fails half-way can be removed by name.
    name = default_storage.get_available_name(
        job.file.field.generate_filename(job, f"export-{job.pk}-{job.format}.zip")
    )
    try:
        with tempfile.TemporaryFile(suffix=".zip") as tmp:
            with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
                for _ in _write_entries(zf, fmt=job.format, filters=filters, progress=progress):
                    pass
            tmp.seek(0)
            job.file.name = default_storage.save(name, File(tmp))
    except Exception as exc:
        logger.exception("export job %s failed", job.pk)
        _discard_partial(name)
        job.file.name = ""
        job.status = ExportJob.Status.FAILED
        job.error = _export_error(exc)
        job.finished_at = timezone.now()
        job.save(update_fields=["status", "error", "finished_at"])
        return job
    job.status = ExportJob.Status.SUCCEEDED
    job.finished_at = timezone.now()
    job.progress = {**job.progress, "percent": 100.0}
    job.save(update_fields=["status", "file", "finished_at", "progress"])
    return job


def _export_error(exc: Exception) -> str:
    """What the job's error says: for a full or unwritable disk, what to do about it."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"The export could not be written: no space left ({exc.strerror or exc}). "
            "Nothing was kept. Free space on the server (or export fewer cells with "
            "filters) and request the export again."
        )
    if isinstance(exc, OSError):
        return (
            f"The export could not be written ({exc.strerror or exc}). Nothing was kept. "
            "Tell an admin to check the storage, then request the export again."
        )
    return str(exc) or exc.__class__.__name__


def _discard_partial(name: str) -> None:
    try:
        if default_storage.exists(name):
            default_storage.delete(name)
    except OSError:  # pragma: no cover - the storage is gone altogether
        logger.warning("could not remove the partial export %s", name)


def export_sync_limit() -> int:
    return int(settings.WBC_EXPORT_SYNC_MAX_CELLS)
