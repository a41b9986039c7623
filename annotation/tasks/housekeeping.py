"""Periodic tasks run by beat (schedule: wbcportal/celery.py)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from annotation.services.events import queue_counts_flush
from annotation.services.review_queue import review_leases_expire
from annotation.services.training import training_jobs_fail_stale


@shared_task(name="mlworker.tasks.housekeeping")
def housekeeping() -> dict[str, Any]:
    """Every minute: expired leases back to the queue, dead training jobs failed."""
    return {"leases_expired": review_leases_expire(), "jobs_failed": training_jobs_fail_stale()}


@shared_task(name="mlworker.tasks.broadcast_queue_counts", ignore_result=True)
def broadcast_queue_counts() -> bool:
    """Every second: send the review-queue counts if they changed (debounced so a busy
    queue costs one count per second, not one per label)."""
    return queue_counts_flush()
