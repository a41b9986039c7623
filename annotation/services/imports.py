"""Import cell images from a folder, a zip, a manifest or a CellaVision export.

Two passes. The first opens and verifies every file (in threads: decoding releases the
GIL) and groups the files by content hash, so the decision for one image is made with
all its copies in view, whatever order they were read in. The second stores the new
images content-addressed (``cells/ab/<sha256>.<ext>``) and writes cells, imported labels
and their audit events in batches, each batch in one transaction.
"""

from __future__ import annotations

import errno
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.utils import timezone

from annotation.errors import ApplicationError, broker_errors
from annotation.importing.inspect import ImageRejected, InspectedImage, inspect_image_bytes
from annotation.importing.sources import SourceFile, SourceListing, list_folder, unpacked_zip
from annotation.models import AuditEvent, Case, CellImage, ImportBatch, Label
from annotation.services.audit import audit_event_create
from annotation.services.pipeline import cells_enqueue_processing
from annotation.types import UserLike
from mlworker.taxonomy import resolve_source_name

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]
NOT_QUEUED_WARNING = (
    "The cells are stored, but the task queue (Redis) was not reachable, so their "
    "segmentation and scoring were not queued. Once Redis is back, an admin runs "
    "`manage.py score_pending` to queue every cell still unprocessed."
)
BATCH = 250


@dataclass
class ImportSummary:
    new_cells: int = 0
    labelled: int = 0
    conflicting: int = 0
    duplicates: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    existing_labelled: int = 0
    out_of_taxonomy: Counter[str] = field(default_factory=Counter)
    unknown_class_names: Counter[str] = field(default_factory=Counter)
    cases_created: int = 0
    layout: str = ""
    cell_ids: list[int] = field(default_factory=list)
    processing_not_queued: bool = False

    def line(self) -> str:
        return (
            f"imported {self.new_cells} cells ({self.labelled} labelled, "
            f"{self.conflicting} conflicting), {self.duplicates} duplicates, "
            f"{len(self.skipped)} skipped"
        ) + (f". {NOT_QUEUED_WARNING}" if self.processing_not_queued else "")

    def as_dict(self) -> dict[str, object]:
        return {
            "layout": self.layout,
            "new_cells": self.new_cells,
            "labelled": self.labelled,
            "conflicting": self.conflicting,
            "duplicates": self.duplicates,
            "skipped": len(self.skipped),
            "skipped_files": [{"file": f, "reason": r} for f, r in self.skipped],
            "existing_cells_labelled": self.existing_labelled,
            "out_of_taxonomy": dict(self.out_of_taxonomy),
            "unknown_class_names": dict(self.unknown_class_names),
            "cases_created": self.cases_created,
            "line": self.line(),
            "processing_queued": not self.processing_not_queued,
            **({"warning": NOT_QUEUED_WARNING} if self.processing_not_queued else {}),
        }


@dataclass
class _Group:
    """All copies of one image content found in this import."""

    image: InspectedImage
    copies: list[SourceFile]

    def class_names(self) -> list[str]:
        names: list[str] = []
        for copy in self.copies:
            if copy.class_name and copy.class_name not in names:
                names.append(copy.class_name)
        return names

    def decision(self) -> tuple[str | None, bool]:
        """(14-Diff code or None, conflicting). Each distinct class counts once:
        a mapped name by its code, an unmapped name by itself."""
        identities = set()
        codes = set()
        for name in self.class_names():
            code = resolve_source_name(name).code
            identities.add(code or f"name:{name.casefold()}")
            if code:
                codes.add(code)
        if len(identities) > 1:
            return None, True
        return (codes.pop() if codes else None), False

    def representative(self) -> SourceFile:
        return next((c for c in self.copies if c.class_name), self.copies[0])


def _read_bounded(path: Path, max_bytes: int) -> bytes | str:
    """The file's bytes, or why not: a file over the per-image limit is refused from its
    size on disk, and read no further than one byte past the limit even if it grows (or
    lies about its size, like a device file), so no file is ever held whole beyond it."""
    try:
        if path.stat().st_size > max_bytes:
            return f"file is {path.stat().st_size} bytes, over the per-image limit of {max_bytes}"
        with path.open("rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if len(data) > max_bytes:
        return f"file is over the per-image limit of {max_bytes} bytes"
    return data


def _inspect(source: SourceFile) -> InspectedImage | str:
    data = _read_bounded(source.path, settings.WBC_MAX_UPLOAD_BYTES)
    if isinstance(data, str):
        return data
    try:
        return inspect_image_bytes(
            data,
            max_side=settings.WBC_MAX_CELL_SIDE,
            min_side=settings.WBC_MIN_CELL_SIDE,
            max_bytes=settings.WBC_MAX_UPLOAD_BYTES,
        )
    except ImageRejected as exc:
        return str(exc)


def _existing_cells(shas: Iterable[str]) -> dict[str, CellImage]:
    found: dict[str, CellImage] = {}
    sha_list = list(shas)
    for start in range(0, len(sha_list), 1000):
        chunk = sha_list[start : start + 1000]
        for cell in CellImage.objects.filter(sha256__in=chunk):
            found[cell.sha256] = cell
    return found


def _ensure_cases(listing: SourceListing, summary: ImportSummary) -> dict[str, Case]:
    cases: dict[str, Case] = {}
    for key, info in listing.cases.items():
        case, created = Case.objects.get_or_create(
            accession_id=info.accession_id,
            defaults={
                "patient_pseudonym": info.patient,
                "diagnosis": info.diagnosis,
                "source": listing.layout,
                "metadata": info.metadata,
            },
        )
        if not created and info.diagnosis and not case.diagnosis:
            case.diagnosis = info.diagnosis
            case.save(update_fields=["diagnosis", "updated_at"])
        summary.cases_created += int(created)
        cases[key] = case
    return cases


def _image_name(group: _Group) -> str:
    return f"cells/{group.image.sha256[:2]}/{group.image.sha256}.{group.image.extension}"


def _store_image(group: _Group) -> str:
    name = _image_name(group)
    saved = default_storage.save(name, ContentFile(group.representative().path.read_bytes()))
    if saved != name:  # pragma: no cover - a storage backend that renames on its own
        logger.warning("storage saved %s as %s", name, saved)
    return saved


def _storage_failed(exc: OSError) -> ApplicationError:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    reason = "the storage is full" if full else "the storage refused the write"
    return ApplicationError(
        f"Could not store the images: {reason} ({exc.strerror or exc}). Nothing from the "
        "failing batch was kept; images stored by earlier batches are complete. Free space "
        "(or fix the storage's permissions) and run the import again: images already "
        "stored are recognised and not stored twice.",
        code="storage_full" if full else "storage_error",
        status=507 if full else 503,
    )


def _store_batch(groups: list[_Group]) -> tuple[list[str], list[str]]:
    """(names of every group's file, names this call created). Content-addressed: the
    same bytes always land at the same name, so a file stored earlier is reused. On a
    storage error the files this call created are removed again (the failing one too,
    which may be half-written), so a failed batch leaves no orphan."""
    names: list[str] = []
    created: list[str] = []
    try:
        for group in groups:
            if default_storage.exists(_image_name(group)):
                names.append(_image_name(group))
                continue
            # Listed before the write: a write that fails half-way leaves a partial file.
            created.append(_image_name(group))
            name = _store_image(group)
            created[-1] = name
            names.append(name)
    except OSError as exc:
        _discard(created)
        raise _storage_failed(exc) from exc
    return names, created


def _discard(names: list[str]) -> None:
    for name in names:
        try:
            if default_storage.exists(name):
                default_storage.delete(name)
        except OSError:  # pragma: no cover - the storage is gone altogether
            logger.warning("could not remove %s after a failed import", name)


def _write_batch(
    groups: list[_Group], cases: dict[str, Case], summary: ImportSummary
) -> list[_Group]:
    """Store one batch of new images; returns the groups someone else stored first."""
    names, created = _store_batch(groups)
    try:
        return _write_batch_rows(groups, names, cases, summary)
    except Exception:
        # The rows rolled back: the files stored for them would be orphans.
        _discard(created)
        raise


def _write_batch_rows(
    groups: list[_Group], names: list[str], cases: dict[str, Case], summary: ImportSummary
) -> list[_Group]:
    with transaction.atomic():
        cells = []
        for group, name in zip(groups, names, strict=True):
            source = group.representative()
            class_names = group.class_names()
            code, conflicting = group.decision()
            cells.append(
                CellImage(
                    case=cases[source.case_key],
                    image=name,
                    sha256=group.image.sha256,
                    width=group.image.width,
                    height=group.image.height,
                    original_filename=source.path.name[:255],
                    source_class_name=""
                    if conflicting
                    else (class_names[0] if class_names else ""),
                    source_labels=class_names,
                    has_label_conflict=conflicting,
                )
            )
        try:
            with transaction.atomic():
                CellImage.objects.bulk_create(cells)
        except IntegrityError:
            # Another import stored some of these images a moment ago.
            taken = set(_existing_cells(g.image.sha256 for g in groups))
            return [g for g in groups if g.image.sha256 in taken]
        labels = []
        labelled_cells = []
        for group, cell in zip(groups, cells, strict=True):
            code, conflicting = group.decision()
            summary.new_cells += 1
            summary.cell_ids.append(cell.pk)
            if conflicting:
                summary.conflicting += 1
            elif code:
                summary.labelled += 1
                labels.append(Label(cell=cell, code=code, source=Label.Source.IMPORTED))
                labelled_cells.append(cell)
        Label.objects.bulk_create(labels)
        for cell, label in zip(labelled_cells, labels, strict=True):
            cell.current_label = label
        CellImage.objects.bulk_update(labelled_cells, ["current_label"])
        AuditEvent.objects.bulk_create(
            [
                AuditEvent(
                    action="label.create",
                    target_type="cell",
                    target_id=str(label.cell_id),
                    after={"label_id": label.pk, "code": label.code, "source": "imported"},
                )
                for label in labels
            ]
        )
    return []


def _label_existing(groups: list[tuple[_Group, CellImage]], summary: ImportSummary) -> None:
    """A re-import can bring the first label for a cell stored earlier without one; it
    never replaces a label that exists."""
    from annotation.services.labels import cell_label_create

    for group, cell in groups:
        code, conflicting = group.decision()
        if (
            code
            and not conflicting
            and cell.current_label_id is None
            and not cell.has_label_conflict
        ):
            cell_label_create(cell_id=cell.pk, code=code, annotator=None, source="imported")
            summary.existing_labelled += 1


def _import_listing(
    listing: SourceListing,
    *,
    batch: ImportBatch,
    progress: ProgressFn | None,
    workers: int,
) -> ImportSummary:
    summary = ImportSummary(layout=listing.layout)
    summary.skipped.extend(listing.missing)
    total = len(listing.files)
    batch.files_total = total
    batch.save(update_fields=["files_total"])

    groups: dict[str, _Group] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done, (source, result) in enumerate(
            zip(listing.files, pool.map(_inspect, listing.files), strict=True), start=1
        ):
            if isinstance(result, str):
                summary.skipped.append((source.display_name, result))
            else:
                group = groups.setdefault(result.sha256, _Group(result, []))
                group.copies.append(source)
            if progress:
                progress("checking", done, total)

    for group in groups.values():
        for name in group.class_names():
            resolved = resolve_source_name(name)
            if resolved.code is None:
                counter = summary.out_of_taxonomy if resolved.known else summary.unknown_class_names
                counter[name] += sum(1 for c in group.copies if c.class_name == name)

    existing = _existing_cells(groups)
    new_groups = [g for sha, g in groups.items() if sha not in existing]
    summary.duplicates = sum(len(g.copies) for g in groups.values()) - len(new_groups)
    _label_existing([(g, existing[sha]) for sha, g in groups.items() if sha in existing], summary)

    cases = _ensure_cases(listing, summary) if new_groups else {}
    for start in range(0, len(new_groups), BATCH):
        chunk = new_groups[start : start + BATCH]
        lost_race = _write_batch(chunk, cases, summary)
        if lost_race:
            summary.duplicates += len(lost_race)
            rest = [g for g in chunk if g not in lost_race]
            if rest:
                _write_batch(rest, cases, summary)
        done = min(start + BATCH, len(new_groups))
        batch.files_done = done
        batch.save(update_fields=["files_done"])
        if progress:
            progress("storing", done, len(new_groups))
    return summary


def _symlinks_in(root: Path) -> list[tuple[str, str]]:
    """Links inside an import folder are reported, never followed: one could point at
    any file the importing process may read (another patient's data, /etc/...)."""
    return [
        (
            path.relative_to(root).as_posix(),
            "is a symbolic link; links are not followed. Copy the file itself into the folder.",
        )
        for path in sorted(root.rglob("*"))
        if path.is_symlink()
    ]


def cells_import(
    *,
    source: Path,
    case_name: str | None = None,
    user: UserLike | None = None,
    progress: ProgressFn | None = None,
    workers: int = 4,
    enqueue_processing: bool = True,
) -> ImportSummary:
    """Import every cell image under ``source`` (a folder or a .zip).

    Bad files are skipped with their reason and never stop the rest; images already
    stored (same SHA-256) are counted as duplicates and never stored twice.
    """
    source = Path(source)
    if not source.exists():
        raise ApplicationError(f"{source} does not exist.", code="not_found", status=404)
    batch = ImportBatch.objects.create(source=str(source)[:1024], created_by=user)
    try:
        if source.is_file() and source.suffix.lower() == ".zip":
            with unpacked_zip(
                source,
                max_total_bytes=settings.WBC_MAX_ZIP_BYTES,
                max_member_bytes=settings.WBC_MAX_UPLOAD_BYTES,
                max_ratio=settings.WBC_MAX_ZIP_RATIO,
            ) as unpacked:
                listing = list_folder(unpacked.root, case_name=case_name)
                listing.missing.extend(unpacked.skipped)
                summary = _import_listing(listing, batch=batch, progress=progress, workers=workers)
        elif source.is_dir():
            listing = list_folder(source, case_name=case_name)
            listing.missing.extend(_symlinks_in(source))
            summary = _import_listing(listing, batch=batch, progress=progress, workers=workers)
        else:
            raise ApplicationError(
                f"{source} is neither a folder nor a .zip file.", code="unsupported_source"
            )
    except Exception as exc:
        batch.status = ImportBatch.Status.FAILED
        batch.error = str(exc)
        batch.finished_at = timezone.now()
        batch.save(update_fields=["status", "error", "finished_at"])
        raise
    if enqueue_processing:
        _enqueue_processing(summary)
    batch.status = ImportBatch.Status.DONE
    batch.summary = summary.as_dict()
    batch.finished_at = timezone.now()
    with transaction.atomic():
        batch.save(update_fields=["status", "summary", "finished_at"])
        audit_event_create(
            actor=user,
            action="import",
            target_type="import_batch",
            target_id=batch.pk,
            after={k: v for k, v in batch.summary.items() if k != "skipped_files"},
        )
    return summary


def _enqueue_processing(summary: ImportSummary) -> None:
    """Queue the new cells' processing. The cells are stored either way: when Redis is
    down the import still succeeds and says so, and `manage.py score_pending` queues
    whatever lacks a segmentation or prediction once Redis is back."""
    try:
        # Each batch of cells has committed already; inside a caller's transaction the
        # tasks go out when it commits.
        cells_enqueue_processing(cell_ids=summary.cell_ids)
    except broker_errors() as exc:
        logger.error("import stored %d cells but could not queue them: %s", summary.new_cells, exc)
        summary.processing_not_queued = True
