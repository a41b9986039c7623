"""Celery tasks of the annotation app: thin wrappers over services, ids in, idempotent."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="annotation.tasks.export_job_run", acks_late=True)
def export_job_run_task(job_id: int) -> str:
    from annotation.services.exports import export_job_run

    return export_job_run(job_id=job_id).status
