"""Segmentation (queue cpu) and scoring (queue gpu) of cells; see annotation/review_queue.md.

Both services are idempotent (upserts keyed by cell and method or model version), so
``acks_late`` redelivery after a worker dies and the retries below are safe. Retries are
for transient errors only: a database or broker connection that dropped.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError

from annotation.services.pipeline import cells_score, cells_segment

TRANSIENT = (OperationalError, InterfaceError, ConnectionError)


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
    return cells_segment(cell_ids=cell_ids)


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
    return cells_score(cell_ids=cell_ids, version_id=version_id)
