"""A training job's life outside the run itself: open (and the one-open-job lock), cancel,
fail (watchdog, dead task, a task that could not be queued), send again (a task lost on
its way), and the websocket announcements every change sends. No lock outlives its job:
every way a job can end short of running releases it (docs/faults.md)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from annotation.errors import ApplicationError, broker_errors, get_or_404
from annotation.models import TrainingJob
from annotation.services.audit import audit_event_create
from annotation.services.events import JOB_LOGS_GROUP, JOBS_GROUP, broadcast
from annotation.types import UserLike

logger = logging.getLogger(__name__)

ERROR_CHARS = 4000
NOT_QUEUED = (
    "the task queue (Redis) was not reachable when the job was requested, so it never "
    "ran; the active model is unchanged. Request the training again once the queue is back."
)
# A queued job's task is looked for in the broker only after this long: the request that
# opened the job sends it right after its commit.
QUEUED_GRACE_SECONDS = 60
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

            transaction.on_commit(lambda: _training_job_send(job_id=job_id))
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


def _training_job_send(*, job_id: int) -> None:
    """Queue the job's task (on commit). A broker that does not answer fails the job
    there and then, releasing the lock, and answers 503 saying so: a job left queued
    without a task would hold the lock and refuse every later request until cancelled."""
    from annotation.tasks.training import train_model

    try:
        result = train_model.delay(job_id)
    except broker_errors():
        logger.warning("training job %s: the task queue does not answer; job failed", job_id)
        with transaction.atomic():
            job = TrainingJob.objects.select_for_update().filter(pk=job_id).first()
            if job is not None and job.status == TrainingJob.Status.QUEUED:
                training_job_finish(job=job, status=TrainingJob.Status.FAILED, error=NOT_QUEUED)
        raise ApplicationError(
            f"The task queue (Redis) is not reachable, so training job {job_id} could not be "
            "queued: it is marked failed and blocks nothing. Request the training again once "
            "the queue is back (see /health/).",
            code="queue_unavailable",
            status=503,
        ) from None
    TrainingJob.objects.filter(pk=job_id, celery_task_id="").update(celery_task_id=result.id or "")


def training_jobs_requeue_lost(*, older_than_s: int = QUEUED_GRACE_SECONDS) -> list[int]:
    """Housekeeping: send again the task of a queued job whose message is nowhere in the
    broker (neither waiting in ``gpu`` nor taken by a worker), older than a minute. That
    is a send that never happened (the web process died between commit and send) or a
    message Redis lost (a restart without persistence); either would leave the job queued
    for ever, holding the training lock. A copy that turns up after all is harmless: a
    task only runs a job that is still queued. Without an answering broker nothing is
    judged (and nothing could be sent)."""
    from annotation.broker import broker_tasks
    from annotation.tasks.training import train_model

    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    candidates = list(
        TrainingJob.objects.filter(status=TrainingJob.Status.QUEUED, created_at__lt=cutoff)
        .order_by("id")
        .values_list("id", flat=True)
    )
    if not candidates:
        return []
    in_broker = broker_tasks(queue="gpu", names=frozenset({train_model.name}), reserved=True)
    if in_broker is None:
        return []
    present = {int(t.args[0]) for t in in_broker if t.args and isinstance(t.args[0], int)}
    requeued = []
    for job_id in candidates:
        if job_id in present:
            continue
        logger.warning(
            "training job %s is queued but its task is not in the broker; sent again", job_id
        )
        result = train_model.delay(job_id)
        TrainingJob.objects.filter(pk=job_id, status=TrainingJob.Status.QUEUED).update(
            celery_task_id=result.id or ""
        )
        requeued.append(job_id)
    return requeued


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
