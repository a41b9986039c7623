"""Periodic tasks run by beat (schedule: wbcportal/celery.py)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from annotation.services.events import queue_counts_flush
from annotation.services.lis import lis_deliveries_requeue_lost
from annotation.services.pipeline import cells_reconcile
from annotation.services.review_queue import review_leases_expire
from annotation.services.training import training_jobs_fail_stale, training_jobs_requeue_lost


@shared_task(name="mlworker.tasks.housekeeping")
def housekeeping() -> dict[str, Any]:
    """Every minute, make the world how it should be, whatever went wrong since: expired
    leases back to the queue, silent training jobs failed, queued jobs whose task was
    lost sent again, stranded cells queued again, LIS deliveries whose task was lost
    sent again (docs/faults.md, docs/lis.md). Each step is safe to repeat and to run
    late."""
    return {
        "leases_expired": review_leases_expire(),
        "jobs_failed": training_jobs_fail_stale(),
        "jobs_requeued": training_jobs_requeue_lost(),
        "cells_requeued": cells_reconcile(),
        "lis_requeued": lis_deliveries_requeue_lost(),
    }


@shared_task(name="mlworker.tasks.broadcast_queue_counts", ignore_result=True)
def broadcast_queue_counts() -> bool:
    """Every second: send the review-queue counts if they changed (debounced so a busy
    queue costs one count per second, not one per label)."""
    return queue_counts_flush()
