"""A training job's life outside the run itself: open (and the one-open-job lock), cancel,
fail (watchdog, dead task) and the websocket announcements every change sends."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from annotation.errors import ApplicationError, get_or_404
from annotation.models import TrainingJob
from annotation.services.audit import audit_event_create
from annotation.services.events import JOB_LOGS_GROUP, JOBS_GROUP, broadcast
from annotation.types import UserLike

ERROR_CHARS = 4000
WORKER_LOST = (
    "the worker running this job was lost (killed or crashed); the active model is "
    "unchanged. Start the job again."
)


def _job_event(job: TrainingJob) -> dict[str, Any]:
    return {
        "id": job.pk,
        "status": job.status,
        "progress": job.progress,
        "error": job.error,
        "result_version": job.result_version.name if job.result_version else None,
    }


def training_job_announce(*, job: TrainingJob, with_log: bool = False) -> None:
    """Broadcast the job's state (and, to admins, its log tail) once the write commits."""
    data = _job_event(job)
    log = job.log_tail[-1000:]
    transaction.on_commit(lambda: broadcast(JOBS_GROUP, "training.progress", data))
    if with_log:
        transaction.on_commit(
            lambda: broadcast(JOB_LOGS_GROUP, "training.log", {"id": data["id"], "log_tail": log})
        )


def training_job_create(
    *, trigger: str, user: UserLike | None, params: dict[str, Any] | None = None
) -> TrainingJob:
    """Open a job and queue it. Refused while another job is queued or running."""
    if trigger not in TrainingJob.Trigger.values:
        raise ApplicationError(
            f"Unknown trigger {trigger!r}; use one of {', '.join(TrainingJob.Trigger.values)}.",
            fields={"trigger": "unknown"},
        )
    try:
        # The unique ``lock`` column is the lock: a second open job fails the insert.
        with transaction.atomic():
            job = TrainingJob.objects.create(trigger=trigger, created_by=user, params=params or {})
            audit_event_create(
                actor=user,
                action="training.trigger",
                target_type="training_job",
                target_id=job.pk,
                after={"trigger": trigger, "params": params or {}},
            )
            job_id = job.pk

            def send() -> None:
                from annotation.tasks.training import train_model

                result = train_model.delay(job_id)
                TrainingJob.objects.filter(pk=job_id, celery_task_id="").update(
                    celery_task_id=result.id or ""
                )

            transaction.on_commit(send)
            training_job_announce(job=job)
    except IntegrityError:
        open_job = TrainingJob.objects.filter(lock=True).first()
        raise ApplicationError(
            f"Training job {open_job.pk if open_job else '?'} is already "
            f"{open_job.status if open_job else 'open'}; wait for it or cancel it first.",
            code="training_busy",
            status=409,
        ) from None
    return job


def training_job_finish(*, job: TrainingJob, status: str, error: str = "") -> None:
    """Close the job (releasing the lock so the next one can start) and announce it.
    The caller holds the row lock inside its own transaction."""
    job.status = status
    job.error = error[-ERROR_CHARS:]
    job.lock = None
    job.finished_at = timezone.now()
    job.save(update_fields=["status", "error", "lock", "finished_at"])
    training_job_announce(job=job, with_log=True)


def training_job_cancel(*, job_id: int, user: UserLike | None) -> TrainingJob:
    with transaction.atomic():
        job = get_or_404(TrainingJob.objects.select_for_update(), what="Training job", pk=job_id)
        if job.status not in (TrainingJob.Status.QUEUED, TrainingJob.Status.RUNNING):
            raise ApplicationError(
                f"Training job {job_id} is {job.status}; only a queued or running job can be "
                "cancelled.",
                code="not_running",
                status=409,
            )
        # A running job notices at its next progress report and stops there.
        training_job_finish(
            job=job, status=TrainingJob.Status.CANCELLED, error="cancelled by a user"
        )
        audit_event_create(
            actor=user, action="training.cancel", target_type="training_job", target_id=job.pk
        )
    return job


def training_jobs_fail_stale(*, timeout_s: int | None = None) -> list[int]:
    """Watchdog: a running job whose worker stopped reporting (killed, out of memory,
    machine lost) is failed and the lock released, so a retry can start."""
    timeout = timedelta(seconds=timeout_s or settings.WBC_TRAINING_HEARTBEAT_TIMEOUT)
    cutoff = timezone.now() - timeout
    failed = []
    with transaction.atomic():
        stale = TrainingJob.objects.select_for_update(skip_locked=True).filter(
            status=TrainingJob.Status.RUNNING, heartbeat_at__lt=cutoff
        )
        for job in stale:
            training_job_finish(
                job=job,
                status=TrainingJob.Status.FAILED,
                error=f"the worker stopped reporting for over {int(timeout.total_seconds())} s "
                "(killed or crashed); the active model is unchanged. Start the job again.",
            )
            failed.append(job.pk)
    return failed


def training_job_fail_by_task(*, task_id: str, reason: str) -> None:
    """Called when Celery knows a job's task died (worker lost, time limit)."""
    with transaction.atomic():
        for job in TrainingJob.objects.select_for_update().filter(
            celery_task_id=task_id,
            status__in=[TrainingJob.Status.QUEUED, TrainingJob.Status.RUNNING],
        ):
            training_job_finish(job=job, status=TrainingJob.Status.FAILED, error=reason)
