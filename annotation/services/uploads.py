"""Cells uploaded through the API: the upload rules, then the same import as ``import_cells``.

The API view (annotation/api/cells.py) only receives the files; what a valid upload is
(images or one zip, never both; a class only for images), where the files are staged and
under which names, and when an upload counts as having imported nothing, is decided here,
so an upload and a command-line import of the same files give the same cells.
"""

from __future__ import annotations

import errno
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from django.utils import timezone

from annotation.errors import ApplicationError
from annotation.services.imports import ImportSummary, cells_import
from annotation.types import UserLike

# Parallel readers per upload: an upload is one request, and the web process has more.
UPLOAD_IMPORT_WORKERS = 2

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")


class UploadedFile(Protocol):
    """What the service needs of an uploaded file (Django's ``UploadedFile`` has it)."""

    name: str | None

    def chunks(self) -> Iterable[bytes]: ...


def _is_zip(upload: UploadedFile) -> bool:
    return (upload.name or "").lower().endswith(".zip")


def safe_filename(name: str, taken: set[str]) -> str:
    """A file name safe to create in the staging folder (no path, no odd characters),
    made unique among ``taken`` (case-insensitively, as on the file systems people use)."""
    base = _SAFE_NAME.sub("_", Path(name.replace("\\", "/")).name).strip(" .") or "upload"
    candidate, n = base, 1
    while candidate.lower() in taken:
        stem, dot, ext = base.rpartition(".")
        candidate = f"{stem}-{n}.{ext}" if dot else f"{base}-{n}"
        n += 1
    taken.add(candidate.lower())
    return candidate


def cells_upload(
    *,
    files: Sequence[UploadedFile],
    too_large: Sequence[tuple[str, str]],
    case_name: str | None,
    label: str | None,
    user: UserLike,
) -> dict[str, Any]:
    """Import uploaded images (into one case, optionally all of one class) or one zip.

    ``too_large`` are the files the upload handler dropped for their size, with the reason;
    they are reported as skipped. Images go into ``case_name`` (default ``upload-<date>``);
    a zip may hold any layout ``import_cells`` reads. Raises :class:`ApplicationError` for
    an upload that breaks the rules, and when every file was rejected.
    """
    if not files and not too_large:
        raise ApplicationError(
            "No files were sent: attach images or one zip as the multipart field 'files'.",
            code="no_files",
            fields={"files": "required"},
        )
    zips = [f for f in files if _is_zip(f)]
    if zips and len(files) > 1:
        raise ApplicationError(
            "Send either images or a single zip per request, not both.",
            code="mixed_upload",
            fields={"files": "one .zip, or images only"},
        )
    case_name = case_name or (None if zips else f"upload-{timezone.now():%Y%m%d}")
    if zips and label:
        raise ApplicationError(
            "'label' applies to uploaded images; a zip carries its own classes.",
            code="invalid",
            fields={"label": "not allowed with a zip"},
        )
    staging = Path(tempfile.mkdtemp(prefix="wbc-upload-"))
    try:
        source = _stage(files, zip_upload=zips[0] if zips else None, staging=staging, label=label)
        summary = cells_import(
            source=source, case_name=case_name, user=user, workers=UPLOAD_IMPORT_WORKERS
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _upload_result(summary, too_large)


def _stage(
    files: Sequence[UploadedFile],
    *,
    zip_upload: UploadedFile | None,
    staging: Path,
    label: str | None,
) -> Path:
    """Write the uploads where ``cells_import`` reads them: the zip as it is, images in
    one folder (named after the class when there is one, the layout import reads)."""
    if zip_upload is not None:
        target = staging / safe_filename(zip_upload.name or "upload.zip", set())
        if not target.name.lower().endswith(".zip"):
            target = target.with_suffix(".zip")
        _save(zip_upload, target)
        return target
    root = staging / "upload"
    folder = root / label if label else root
    folder.mkdir(parents=True)
    taken: set[str] = set()
    for upload in files:
        _save(upload, folder / safe_filename(upload.name or "upload", taken))
    return root


def _save(upload: UploadedFile, target: Path) -> None:
    try:
        with target.open("wb") as out:
            for chunk in upload.chunks():
                out.write(chunk)
    except OSError as exc:  # the staging folder is removed by the caller either way
        raise ApplicationError(
            f"The server could not stage the upload ({exc.strerror or exc}); nothing "
            "was imported. Try again later, and tell an admin if it persists (the "
            "temporary folder's disk may be full).",
            code="storage_full" if exc.errno == errno.ENOSPC else "storage_error",
            status=507 if exc.errno == errno.ENOSPC else 503,
        ) from exc


def _upload_result(summary: ImportSummary, too_large: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The import summary with the dropped files among the skipped ones; an upload of
    which nothing could be used is an error that lists every file's reason."""
    result: dict[str, Any] = summary.as_dict()
    result["skipped_files"] = [
        *({"file": f, "reason": r} for f, r in too_large),
        *result["skipped_files"],
    ]
    result["skipped"] = len(result["skipped_files"])
    result["cell_ids"] = summary.cell_ids
    if summary.new_cells == 0 and summary.duplicates == 0 and not result["skipped"]:
        # E.g. a zip of empty folders or of nothing but system files: a 201 "imported 0"
        # would read as success to a script.
        raise ApplicationError(
            "The upload held no image files, so nothing was imported: send JPEG, PNG, BMP "
            "or TIFF cell images, or a zip of them.",
            code="no_images",
            fields={"files": "no image files"},
        )
    if summary.new_cells == 0 and summary.duplicates == 0 and result["skipped"]:
        reasons = {item["file"]: item["reason"] for item in result["skipped_files"]}
        raise ApplicationError(
            "No file could be imported: "
            + "; ".join(f"{name}: {reason}" for name, reason in reasons.items()),
            code="nothing_imported",
            fields=reasons,
        )
    return result
