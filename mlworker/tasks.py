"""The thin Celery layer: load rows by id, call the plain-Python ML, write through the
annotation services. Every task is idempotent (upserts keyed by cell and version), so
``acks_late`` redelivery after a worker dies is safe. See annotation/review_queue.md."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from celery import shared_task
from django.core.files.storage import default_storage
from django.db import InterfaceError, OperationalError

logger = logging.getLogger(__name__)

SEGMENTATION_METHOD = "slic-graphcut-1"
TRANSIENT = (OperationalError, InterfaceError, ConnectionError)
_scorers: dict[int, Any] = {}


def _local_path(name: str) -> Path | None:
    try:
        return Path(default_storage.path(name))
    except NotImplementedError:
        return None


def _scorer(version: Any) -> Any:
    """One loaded model per version per worker process (loading ResNet-152 takes seconds)."""
    from annotation.services.model_registry import model_version_checkpoint
    from mlworker.score import Scorer

    if version.pk not in _scorers:
        _scorers.clear()
        _scorers[version.pk] = Scorer(model_version_checkpoint(version))
    return _scorers[version.pk]


@shared_task(
    name="mlworker.tasks.segment_cells",
    acks_late=True,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    max_retries=5,
    soft_time_limit=1800,
    time_limit=1900,
)
def segment_cells(cell_ids: list[int]) -> dict[str, int]:
    from PIL import Image

    from annotation.models import CellImage, Segmentation
    from annotation.services.pipeline import cell_mark_failed, segmentation_upsert
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
            with default_storage.open(str(cell.image.name), "rb") as fh, Image.open(fh) as im:
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


@shared_task(
    name="mlworker.tasks.score_cells",
    acks_late=True,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    max_retries=5,
    soft_time_limit=3600,
    time_limit=3700,
)
def score_cells(cell_ids: list[int], version_id: int | None = None) -> dict[str, Any]:
    from annotation.models import CellImage, ModelVersion, Prediction
    from annotation.services.pipeline import cell_mark_failed, predictions_upsert
    from annotation.services.routing import cells_route

    if version_id is None:
        version = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first()
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
    if cells:
        scorer = _scorer(version)
        inputs: list[Any] = []
        for cell in cells:
            path = _local_path(str(cell.image.name))
            if path is None:  # remote storage: decode from bytes
                import torch
                from torchvision.io import ImageReadMode, decode_image

                with default_storage.open(str(cell.image.name), "rb") as fh:
                    data = torch.frombuffer(bytearray(fh.read()), dtype=torch.uint8)
                inputs.append(decode_image(data, mode=ImageReadMode.RGB))
            else:
                inputs.append(path)
        scores = scorer.score(inputs, batch_size=64, num_workers=0)
        rows = []
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
    }


@shared_task(
    bind=True,
    name="mlworker.tasks.train_model",
    acks_late=True,
    soft_time_limit=6 * 3600,
    time_limit=6 * 3600 + 120,
)
def train_model(self: Any, job_id: int) -> dict[str, Any]:
    from annotation.models import TrainingJob
    from annotation.services.training import training_job_fail_by_task, training_job_run

    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    job = TrainingJob.objects.filter(pk=job_id).first()
    if job is None:
        return {"status": "missing"}
    if redelivered and job.status == TrainingJob.Status.RUNNING:
        # The worker that ran it died (acks_late put the task back): fail it now with the
        # reason rather than waiting for the watchdog.
        training_job_fail_by_task(
            task_id=job.celery_task_id or str(self.request.id),
            reason="the worker running this job was lost (killed or crashed); the active "
            "model is unchanged. Start the job again.",
        )
        return {"status": "failed", "reason": "worker lost"}
    job = training_job_run(job_id=job_id)
    return {"status": job.status, "version": job.result_version_id}


@shared_task(name="mlworker.tasks.retrain_if_due")
def retrain_if_due() -> dict[str, Any]:
    from annotation.services.training import retrain_if_due as rule

    job = rule()
    return {"started": job.pk if job else None}


@shared_task(name="mlworker.tasks.housekeeping")
def housekeeping() -> dict[str, Any]:
    """Every minute: expired leases back to the queue, dead training jobs failed."""
    from annotation.services.review_queue import review_leases_expire
    from annotation.services.training import training_jobs_fail_stale

    return {"leases_expired": review_leases_expire(), "jobs_failed": training_jobs_fail_stale()}


@shared_task(name="mlworker.tasks.broadcast_queue_counts", ignore_result=True)
def broadcast_queue_counts() -> bool:
    """Every second (beat): send the review-queue counts if they changed."""
    from annotation.services.events import queue_counts_flush

    return queue_counts_flush()
