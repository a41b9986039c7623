"""Large exports, built by a worker (annotation/services/exports/jobs.py)."""

from __future__ import annotations

from celery import shared_task

from annotation.services.exports import export_job_run


@shared_task(name="annotation.tasks.export_job_run", acks_late=True)
def export_job_run_task(job_id: int) -> str:
    return export_job_run(job_id=job_id).status
