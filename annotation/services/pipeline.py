"""Cells through the pipeline: segmentation (queue cpu), scoring (queue gpu), routing.

Tasks receive ids and write through these services; every write is an upsert keyed by
(cell, method version) or (cell, model version), so a task delivered twice (acks_late
after a worker died) changes nothing the second time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction

from annotation.models import CellImage, GoldCell, ModelVersion, Prediction, Segmentation

logger = logging.getLogger(__name__)


def _batches(ids: Sequence[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def cells_enqueue_processing(*, cell_ids: Sequence[int]) -> None:
    """Queue segmentation and scoring for new cells once the transaction that stored
    them has committed (a worker must find the rows)."""
    ids = sorted(cell_ids)
    if not ids:
        return

    def send() -> None:
        from mlworker import tasks

        for batch in _batches(ids, settings.WBC_SEGMENT_BATCH):
            tasks.segment_cells.delay(batch)
        for batch in _batches(ids, settings.WBC_SCORE_BATCH):
            tasks.score_cells.delay(batch)

    transaction.on_commit(send)


def cells_enqueue_scoring(*, cell_ids: Sequence[int], version_id: int | None = None) -> None:
    ids = sorted(cell_ids)

    def send() -> None:
        from mlworker import tasks

        for batch in _batches(ids, settings.WBC_SCORE_BATCH):
            tasks.score_cells.delay(batch, version_id)

    if ids:
        transaction.on_commit(send)


def cell_mark_failed(*, cell_id: int, reason: str) -> None:
    CellImage.objects.filter(pk=cell_id).update(
        processing=CellImage.Processing.FAILED, processing_error=reason[:2000]
    )


def segmentation_upsert(
    *,
    cell: CellImage,
    method_version: str,
    ok: bool,
    quality: float,
    reason: str,
    mask_png: bytes | None,
    wbc_area: int | None,
    nucleus_area: int | None,
    timings_ms: dict[str, float],
) -> Segmentation:
    name = ""
    if mask_png is not None:
        name = f"masks/{method_version}/{cell.sha256[:2]}/{cell.sha256}.png"
        if default_storage.exists(name):
            default_storage.delete(name)
        name = default_storage.save(name, ContentFile(mask_png))
    with transaction.atomic():
        segmentation, _ = Segmentation.objects.update_or_create(
            cell=cell,
            method_version=method_version,
            defaults={
                "status": Segmentation.Status.OK if ok else Segmentation.Status.FAILED,
                "mask": name,
                "quality": quality,
                "failure_reason": reason,
                "wbc_area": wbc_area,
                "nucleus_area": nucleus_area,
                "timings_ms": timings_ms,
            },
        )
        CellImage.objects.filter(pk=cell.pk, processing=CellImage.Processing.PENDING).update(
            processing=CellImage.Processing.SEGMENTED
        )
    return segmentation


def predictions_upsert(*, version: ModelVersion, rows: list[dict[str, object]]) -> int:
    """rows: cell_id, probabilities, top_code, confidence, margin, entropy, features
    (np.ndarray or None). One row per (cell, version), replaced if it exists."""
    objs = []
    for row in rows:
        features = row.get("features")
        objs.append(
            Prediction(
                cell_id=int(row["cell_id"]),  # type: ignore[call-overload]
                model_version=version,
                probabilities=[round(float(p), 6) for p in row["probabilities"]],  # type: ignore[attr-defined]
                top_code=str(row["top_code"]),
                confidence=float(row["confidence"]),  # type: ignore[arg-type]
                margin=float(row["margin"]),  # type: ignore[arg-type]
                entropy=float(row["entropy"]),  # type: ignore[arg-type]
                features=(
                    np.asarray(features, dtype=np.float16).tobytes()
                    if features is not None
                    else None
                ),
            )
        )
    with transaction.atomic():
        Prediction.objects.bulk_create(
            objs,
            update_conflicts=True,
            unique_fields=["cell", "model_version"],
            update_fields=[
                "probabilities",
                "top_code",
                "confidence",
                "margin",
                "entropy",
                "features",
            ],
        )
        CellImage.objects.filter(pk__in=[o.cell_id for o in objs]).exclude(
            processing=CellImage.Processing.FAILED
        ).update(processing=CellImage.Processing.SCORED)
    return len(objs)


def gold_cells_enqueue_scoring(*, version_id: int) -> int:
    """Score every active gold cell the version has not scored yet, so each version is
    measured on the whole gold set (annotation/services/gold.py). Returns how many cells
    were queued; the tasks are sent once the caller's transaction commits."""
    ids = list(
        GoldCell.objects.filter(retired_at__isnull=True)
        .exclude(cell__processing=CellImage.Processing.FAILED)
        .exclude(cell__predictions__model_version_id=version_id)
        .values_list("cell_id", flat=True)
    )
    cells_enqueue_scoring(cell_ids=ids, version_id=version_id)
    return len(ids)


def gold_cell_enqueue_scoring(*, cell_id: int) -> list[int]:
    """A new gold cell is scored by the versions a decision rests on: the active one and
    the candidates (earlier versions: ``score_pending --model-version NAME``). Returns their
    ids."""
    versions = list(
        ModelVersion.objects.filter(
            status__in=[ModelVersion.Status.ACTIVE, ModelVersion.Status.CANDIDATE]
        )
        .exclude(checkpoint="")
        .exclude(predictions__cell_id=cell_id)
        .values_list("id", flat=True)
    )
    for version_id in versions:
        cells_enqueue_scoring(cell_ids=[cell_id], version_id=version_id)
    return versions
