"""Retraining (queue gpu) and the scheduled retraining rule (annotation/services/training/)."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from annotation.services import training


@shared_task(
    bind=True,
    name="mlworker.tasks.train_model",
    acks_late=True,
    soft_time_limit=6 * 3600,
    time_limit=6 * 3600 + 120,
)
def train_model(self: Task, job_id: int) -> dict[str, Any]:
    # Only the task sees the delivery: the service decides what a redelivery means.
    return training.training_job_start_from_task(
        job_id=job_id,
        task_id=str(self.request.id),
        redelivered=bool((self.request.delivery_info or {}).get("redelivered")),
    )


@shared_task(name="mlworker.tasks.retrain_if_due")
def retrain_if_due() -> dict[str, Any]:
    job = training.retrain_if_due()
    return {"started": job.pk if job else None}
