"""Large exports: an ExportJob row, built into a stored zip by a Celery task."""

from __future__ import annotations

import errno
import logging
import tempfile
import zipfile

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from annotation.models import ExportJob
from annotation.services.exports.archive import export_zip_write
from annotation.services.exports.filters import ExportFilters, export_count
from annotation.services.exports.formats import export_format_check
from annotation.types import UserLike

logger = logging.getLogger(__name__)


def export_sync_limit() -> int:
    """Up to this many cells an export is streamed; above it, it becomes a job."""
    return int(settings.WBC_EXPORT_SYNC_MAX_CELLS)


def export_job_create(*, fmt: str, filters: ExportFilters, user: UserLike | None) -> ExportJob:
    """Record an export job and enqueue its task once the job row is committed (a worker
    that started earlier would not find the row)."""
    from annotation.tasks.exports import export_job_run_task  # the task module imports us

    export_format_check(fmt)
    with transaction.atomic():
        job = ExportJob.objects.create(
            format=fmt,
            params=filters.as_params(),
            requested_by=user,
            n_cells=export_count(filters=filters),
            progress={"done": 0, "total": 0, "percent": 0},
        )
        export_job_run_task.delay_on_commit(job.pk)
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
                for _ in export_zip_write(zf, fmt=job.format, filters=filters, progress=progress):
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
