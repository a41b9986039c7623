"""The scheduled rule (Celery beat): retrain only once enough new hematologist labels
exist since the last successful training."""

from __future__ import annotations

import logging

from annotation.errors import ApplicationError
from annotation.models import Label, TrainingJob
from annotation.services.training.jobs import training_job_create

logger = logging.getLogger(__name__)


def retrain_is_due() -> tuple[bool, str]:
    """The scheduled rule: retrain only when enough new hematologist labels exist."""
    from annotation.selectors.routing import routing_config_get

    minimum = routing_config_get().retrain_min_new_labels
    last = (
        TrainingJob.objects.filter(status=TrainingJob.Status.SUCCEEDED)
        .order_by("-finished_at")
        .first()
    )
    since = last.started_at if last and last.started_at else None
    labels = Label.objects.filter(source=Label.Source.HEMATOLOGIST)
    if since is not None:
        labels = labels.filter(created_at__gte=since)
    n = labels.count()
    if n < minimum:
        return False, f"{n} new hematologist labels since the last training; {minimum} needed"
    return True, f"{n} new hematologist labels since the last training"


def retrain_after_labels_is_due() -> tuple[bool, str]:
    """The label-count rule: as soon as ``retrain_every_labels`` new hematologist labels
    exist since the last training job was opened (whatever became of it, so a failing
    run is not retried on every label), retrain. Off when the setting is 0."""
    from annotation.selectors.routing import routing_config_get

    every = routing_config_get().retrain_every_labels
    if not every:
        return False, "retraining after N labels is off"
    last = TrainingJob.objects.order_by("-created_at").values_list("created_at", flat=True)
    since = last.first()
    labels = Label.objects.filter(source=Label.Source.HEMATOLOGIST)
    if since is not None:
        labels = labels.filter(created_at__gte=since)
    n = labels.count()
    if n < every:
        return False, f"{n} new hematologist labels since the last training job; {every} needed"
    return True, f"{n} new hematologist labels since the last training job (every {every})"


def retrain_after_labels() -> TrainingJob | None:
    """Called after a hematologist's label is committed: opens a job (trigger "labels")
    when the label-count rule says so. A job already open, or a queue that does not
    answer, is logged, never an error for the person labelling."""
    due, why = retrain_after_labels_is_due()
    if not due:
        return None
    logger.info("retraining after labels: %s", why)
    try:
        return training_job_create(trigger=TrainingJob.Trigger.LABELS, user=None)
    except ApplicationError as exc:
        level = logging.WARNING if exc.code == "queue_unavailable" else logging.INFO
        logger.log(level, "retraining after labels skipped: %s", exc.message)
        return None


def retrain_if_due() -> TrainingJob | None:
    """Open a scheduled job when the rule says so; a job already open is not an error
    here (the beat simply tries again next time), nor is a queue that does not answer
    (the job is failed at once, so it blocks no later run: jobs.py)."""
    due, why = retrain_is_due()
    logger.info("scheduled retraining: %s", why)
    if not due:
        return None
    try:
        return training_job_create(trigger=TrainingJob.Trigger.SCHEDULE, user=None)
    except ApplicationError as exc:
        level = logging.WARNING if exc.code == "queue_unavailable" else logging.INFO
        logger.log(level, "scheduled retraining skipped: %s", exc.message)
        return None
