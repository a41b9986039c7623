"""Cells through the pipeline: segmentation (queue cpu), scoring (queue gpu), routing.

The Celery tasks (annotation/tasks/pipeline.py) pass ids to ``cells_segment`` and
``cells_score``; every write is an upsert keyed by (cell, method version) or (cell, model
version), so a task delivered twice (acks_late after a worker died) changes nothing the
second time. Tasks are sent with ``delay_on_commit``: a worker must find the rows the
enqueuing transaction wrote, and nothing is queued for a transaction that rolled back.
A task that never comes back (its worker was killed, or it was never sent) is queued again
by ``cells_reconcile`` (housekeeping, every minute), not left to the visibility timeout.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from annotation.models import CellImage, GoldCell, ModelVersion, Prediction, Segmentation
from annotation.services.routing import cells_route
from annotation.storage import storage_local_path, storage_read_bytes

if TYPE_CHECKING:
    import torch

    from mlworker.score import Scorer

logger = logging.getLogger(__name__)

# Stored with each segmentation; a new algorithm gets a new name, and score_pending then
# finds every cell unsegmented by it.
SEGMENTATION_METHOD = "slic-graphcut-1"
SCORE_BATCH_SIZE = 64  # images per forward pass inside one task

# One loaded model per worker process, for the version last used: loading ResNet-152
# takes seconds, and a worker scores with one version at a time.
_scorers: dict[int, Scorer] = {}


def _batches(ids: Sequence[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def cells_enqueue_segmentation(*, cell_ids: Sequence[int]) -> None:
    """Queue segmentation in batches of ``WBC_SEGMENT_BATCH`` once the caller's
    transaction commits. Used by imports and by ``manage.py score_pending``."""
    from annotation.tasks.pipeline import segment_cells

    for batch in _batches(sorted(cell_ids), settings.WBC_SEGMENT_BATCH):
        segment_cells.delay_on_commit(batch)


def cells_enqueue_scoring(*, cell_ids: Sequence[int], version_id: int | None = None) -> None:
    """Queue scoring (None: with the version active when the task runs) in batches of
    ``WBC_SCORE_BATCH`` once the caller's transaction commits."""
    from annotation.tasks.pipeline import score_cells

    for batch in _batches(sorted(cell_ids), settings.WBC_SCORE_BATCH):
        score_cells.delay_on_commit(batch, version_id)


def cells_enqueue_processing(*, cell_ids: Sequence[int]) -> None:
    """Queue segmentation and scoring for new cells (on commit: a worker must find the
    rows)."""
    cells_enqueue_segmentation(cell_ids=cell_ids)
    cells_enqueue_scoring(cell_ids=cell_ids)


@dataclass(frozen=True)
class PendingQueued:
    segmentation: int
    scoring: int


def cells_enqueue_pending(*, version: ModelVersion | None) -> PendingQueued:
    """Queue every cell not failed that lacks a segmentation by ``SEGMENTATION_METHOD``,
    and, given a version, every such cell that version has not scored: the catch-up after
    a broker outage or a new version (``manage.py score_pending``). Sent on commit."""
    live = CellImage.objects.exclude(processing=CellImage.Processing.FAILED)
    with transaction.atomic():
        unsegmented = list(
            live.exclude(
                pk__in=Segmentation.objects.filter(method_version=SEGMENTATION_METHOD).values(
                    "cell_id"
                )
            ).values_list("id", flat=True)
        )
        cells_enqueue_segmentation(cell_ids=unsegmented)
        unscored: list[int] = []
        if version is not None:
            unscored = list(
                live.exclude(
                    pk__in=Prediction.objects.filter(model_version=version).values("cell_id")
                ).values_list("id", flat=True)
            )
            cells_enqueue_scoring(cell_ids=unscored, version_id=version.pk)
    return PendingQueued(segmentation=len(unsegmented), scoring=len(unscored))


def cells_reconcile() -> dict[str, int]:
    """Queue again the cells nothing is working on (stranded: the rule is in
    annotation/selectors/pipeline.py), so a worker killed mid-batch, a task never sent
    or a message lost with Redis is made good within minutes instead of at the visibility
    timeout. Run every minute by housekeeping; returns how many cells were queued per
    stage.

    Safe to repeat: the tasks skip what is done, and a stage is only re-queued while no
    task of it waits in its queue, so the batches queued here stop the next run from
    queueing them again.
    """
    from annotation.selectors.pipeline import STAGES, pipeline_stage_state

    now = timezone.now()
    queued: dict[str, int] = {}
    for stage in STAGES:
        state = pipeline_stage_state(stage=stage, now=now)
        ids = list(state.stranded.order_by("id").values_list("id", flat=True))
        queued[stage] = len(ids)
        if not ids:
            continue
        logger.warning(
            "%d cells stranded in %s (no task waiting, no result for %d s); queued again",
            len(ids),
            stage,
            settings.WBC_STRANDED_AFTER_SECONDS,
        )
        if stage == "segmentation":
            cells_enqueue_segmentation(cell_ids=ids)
        else:
            cells_enqueue_scoring(cell_ids=ids)  # with the version active when it runs
    return queued


def cells_segment(*, cell_ids: Sequence[int]) -> dict[str, int]:
    """Segment the cells that have no segmentation by ``SEGMENTATION_METHOD`` yet. An
    unreadable image fails its cell and the batch goes on."""
    from PIL import Image

    from mlworker.segmentation import ImageFormatError, segment_cell

    done = {"segmented": 0, "failed": 0, "already": 0}
    existing = set(
        Segmentation.objects.filter(
            cell_id__in=cell_ids, method_version=SEGMENTATION_METHOD
        ).values_list("cell_id", flat=True)
    )
    for cell in CellImage.objects.filter(pk__in=cell_ids).order_by("id"):
        if cell.pk in existing:
            done["already"] += 1
            continue
        try:
            data = storage_read_bytes(str(cell.image.name))
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                result = segment_cell(im)
        except (OSError, ImageFormatError, ValueError) as exc:
            cell_mark_failed(
                cell_id=cell.pk, reason=f"image cannot be read for segmentation: {exc}"
            )
            done["failed"] += 1
            continue
        segmentation_upsert(
            cell=cell,
            method_version=SEGMENTATION_METHOD,
            ok=result.ok,
            quality=result.quality,
            reason=result.reason,
            mask_png=result.to_png() if result.ok else None,
            wbc_area=int(result.wbc_mask.sum()) if result.ok else None,
            nucleus_area=int(result.nucleus_mask.sum()) if result.ok else None,
            timings_ms={k: round(v, 2) for k, v in result.timings_ms.items()},
        )
        done["segmented"] += 1
    return done


def _scorer(version: ModelVersion) -> Scorer:
    from annotation.services.model_registry import model_version_scorer

    if version.pk not in _scorers:
        _scorers.clear()
        _scorers[version.pk] = model_version_scorer(version)  # this worker's engine
    return _scorers[version.pk]


def _scoring_input(name: str) -> Path | torch.Tensor:
    """A path where the file is local (the scorer's loader reads and decodes it, on the
    GPU where there is one); the decoded image where the storage is remote."""
    path = storage_local_path(name)
    if path is not None:
        return path
    import torch
    from torchvision.io import ImageReadMode, decode_image

    data = torch.frombuffer(bytearray(storage_read_bytes(name)), dtype=torch.uint8)
    return decode_image(data, mode=ImageReadMode.RGB)


def cells_score(*, cell_ids: Sequence[int], version_id: int | None = None) -> dict[str, Any]:
    """Score the cells the version has not scored yet (None: the active version), then,
    if the version is the active one, route them to the review queue. A cell whose image
    cannot be scored is failed; the rest of the batch is stored."""
    if version_id is None:
        version = ModelVersion.objects.active()
        if version is None:
            return {
                "scored": 0,
                "note": "no active model version; run score_pending after promoting one",
            }
    else:
        version = ModelVersion.objects.get(pk=version_id)
    already = set(
        Prediction.objects.filter(model_version=version, cell_id__in=cell_ids).values_list(
            "cell_id", flat=True
        )
    )
    cells = [
        c
        for c in CellImage.objects.filter(pk__in=cell_ids)
        .exclude(processing=CellImage.Processing.FAILED)
        .order_by("id")
        if c.pk not in already
    ]
    failed = 0
    engine = None
    if cells:
        inputs = [_scoring_input(str(cell.image.name)) for cell in cells]
        scorer = _scorer(version)
        engine = scorer.engine
        scores = scorer.score(inputs, batch_size=SCORE_BATCH_SIZE, num_workers=0)
        rows: list[dict[str, object]] = []
        for cell, score in zip(cells, scores, strict=True):
            if score.error is not None:
                cell_mark_failed(cell_id=cell.pk, reason=f"image cannot be scored: {score.error}")
                failed += 1
                continue
            rows.append(
                {
                    "cell_id": cell.pk,
                    "probabilities": score.probabilities,
                    "top_code": score.top_class,
                    "confidence": score.max_probability,
                    "margin": score.margin,
                    "entropy": score.entropy,
                    "features": score.features,
                }
            )
        predictions_upsert(version=version, rows=rows)
    routed: dict[str, int] = {}
    if version.status == ModelVersion.Status.ACTIVE:
        routed = cells_route(cell_ids=cell_ids, version=version)
    return {
        "scored": len(cells) - failed,
        "failed": failed,
        "already": len(already),
        "routed": routed,
        "engine": engine,  # None when nothing needed scoring
    }


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
