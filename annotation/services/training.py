"""Retraining jobs: the lock, the run, the watchdog and the scheduled rule.

A job runs mlworker.train.fit on every current label (latest label per cell, imported
and adjudicated included, unresolved conflicts excluded), starting from the active
version's weights and retraining the final layers as the paper does. It is judged with
the active version on the same fixed evaluation set; the promotion guard then decides.
"""

from __future__ import annotations

import logging
import random
import shlex
import tempfile
import traceback
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.utils import timezone

from annotation.errors import ApplicationError
from annotation.models import CellImage, EvaluationSet, Label, ModelVersion, TrainingJob
from annotation.services.audit import audit_event_create
from annotation.services.events import JOB_LOGS_GROUP, JOBS_GROUP, broadcast
from annotation.types import UserLike

logger = logging.getLogger(__name__)
EVALUATION_SET = "fixed-validation"
EVALUATION_FRACTION = 0.3
LOG_TAIL_CHARS = 4000


class TrainingCancelled(Exception):
    pass


def _job_event(job: TrainingJob) -> dict[str, Any]:
    return {
        "id": job.pk,
        "status": job.status,
        "progress": job.progress,
        "error": job.error,
        "result_version": job.result_version.name if job.result_version else None,
    }


def _announce(job: TrainingJob, *, with_log: bool = False) -> None:
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
                from mlworker import tasks

                result = tasks.train_model.delay(job_id)
                TrainingJob.objects.filter(pk=job_id, celery_task_id="").update(
                    celery_task_id=result.id or ""
                )

            transaction.on_commit(send)
            _announce(job)
    except IntegrityError:
        open_job = TrainingJob.objects.filter(lock=True).first()
        raise ApplicationError(
            f"Training job {open_job.pk if open_job else '?'} is already "
            f"{open_job.status if open_job else 'open'}; wait for it or cancel it first.",
            code="training_busy",
            status=409,
        ) from None
    return job


def _finish(job: TrainingJob, status: str, *, error: str = "") -> None:
    job.status = status
    job.error = error[-4000:]
    job.lock = None
    job.finished_at = timezone.now()
    job.save(update_fields=["status", "error", "lock", "finished_at"])
    _announce(job, with_log=True)


def training_job_cancel(*, job_id: int, user: UserLike | None) -> TrainingJob:
    with transaction.atomic():
        try:
            job = TrainingJob.objects.select_for_update().get(pk=job_id)
        except TrainingJob.DoesNotExist:
            raise ApplicationError(
                f"Training job {job_id} does not exist.", code="not_found", status=404
            ) from None
        if job.status not in (TrainingJob.Status.QUEUED, TrainingJob.Status.RUNNING):
            raise ApplicationError(
                f"Training job {job_id} is {job.status}; only a queued or running job can be "
                "cancelled.",
                code="not_running",
                status=409,
            )
        # A running job notices at its next progress report and stops there.
        _finish(job, TrainingJob.Status.CANCELLED, error="cancelled by a user")
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
            _finish(
                job,
                TrainingJob.Status.FAILED,
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
            _finish(job, TrainingJob.Status.FAILED, error=reason)


def labelled_cells() -> list[tuple[int, str, str, int]]:
    """(cell id, storage name, 14-Diff code, case id) for every cell whose current label
    counts for training: latest label per cell; unresolved conflicts left out, and active
    gold cells too: they measure every model version, which a version trained on them
    would pass by memory."""
    rows = (
        CellImage.objects.filter(current_label__isnull=False, has_label_conflict=False)
        .exclude(processing=CellImage.Processing.FAILED)
        .exclude(gold__retired_at__isnull=True, gold__isnull=False)
        .values_list("id", "image", "current_label__code", "case_id")
        .order_by("id")
    )
    return list(rows)


def evaluation_set_get_or_create(cells: list[tuple[int, str, str, int]]) -> EvaluationSet:
    """The fixed evaluation set: made once, stratified by class and grouped by case so no
    smear is on both sides; 30 % of the labelled cells at that time."""
    existing = EvaluationSet.objects.filter(name=EVALUATION_SET).first()
    if existing is not None:
        return existing
    by_class: dict[str, list[int]] = defaultdict(list)
    case_of: dict[int, int] = {}
    for cell_id, _, code, case_id in cells:
        by_class[code].append(cell_id)
        case_of[cell_id] = case_id
    rng = random.Random(0)
    cases = sorted(set(case_of.values()))
    chosen: set[int] = set()
    if len(cases) >= 4:
        rng.shuffle(cases)
        held_cases = set(cases[: max(1, round(len(cases) * EVALUATION_FRACTION))])
        chosen = {c for c, case in case_of.items() if case in held_cases}
    if not chosen or len(cases) < 4:
        for ids in by_class.values():
            ids = sorted(ids)
            rng.shuffle(ids)
            chosen.update(ids[: round(len(ids) * EVALUATION_FRACTION)])
    counts: dict[str, int] = defaultdict(int)
    for cell_id, _, code, _ in cells:
        if cell_id in chosen:
            counts[code] += 1
    return EvaluationSet.objects.create(
        name=EVALUATION_SET, cell_ids=sorted(chosen), counts=dict(counts)
    )


def _local_path(name: str, scratch: Path) -> Path:
    """A file path for the training code; copies out of remote storage when needed."""
    try:
        return Path(default_storage.path(name))
    except NotImplementedError:
        target = scratch / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with default_storage.open(name, "rb") as src:
            target.write_bytes(src.read())
        return target


def _retrain_args(job: TrainingJob) -> list[str]:
    return shlex.split(settings.WBC_RETRAIN_ARGS) + [str(a) for a in job.params.get("args", [])]


def training_job_run(*, job_id: int) -> TrainingJob:
    """Run one job to the end (in a Celery worker). Never touches the active version."""

    from annotation.services.model_registry import (
        model_version_checkpoint,
        model_version_register,
    )
    from mlworker.data import Sample
    from mlworker.model import save_checkpoint
    from mlworker.train import evaluate_samples, fit, parse_train_config

    with transaction.atomic():
        job = TrainingJob.objects.select_for_update().get(pk=job_id)
        if job.status != TrainingJob.Status.QUEUED:
            logger.info("training job %s is %s; nothing to do", job_id, job.status)
            return job
        job.status = TrainingJob.Status.RUNNING
        job.started_at = job.heartbeat_at = timezone.now()
        job.progress = {"stage": "preparing", "percent": 0}
        job.save(update_fields=["status", "started_at", "heartbeat_at", "progress"])
        _announce(job)

    log_lines: list[str] = []

    def report(progress: dict[str, Any]) -> None:
        line = progress.pop("log", None)
        if line:
            log_lines.append(str(line))
        with transaction.atomic():
            current = TrainingJob.objects.select_for_update().get(pk=job_id)
            if current.status != TrainingJob.Status.RUNNING:
                raise TrainingCancelled(f"job is {current.status}")
            current.progress = progress
            current.heartbeat_at = timezone.now()
            current.log_tail = "\n".join(log_lines)[-LOG_TAIL_CHARS:]
            current.save(update_fields=["progress", "heartbeat_at", "log_tail"])
            _announce(current, with_log=bool(line))

    try:
        cells = labelled_cells()
        if not cells:
            raise ApplicationError("There are no labelled cells to train on.")
        evaluation = evaluation_set_get_or_create(cells)
        held = set(evaluation.cell_ids)
        active = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first()
        with tempfile.TemporaryDirectory(prefix="wbc-train-") as tmp:
            scratch = Path(tmp)
            samples = {
                cell_id: Sample(path=_local_path(name, scratch), code=code, patient=str(case_id))
                for cell_id, name, code, case_id in cells
            }
            train = [s for cid, s in samples.items() if cid not in held]
            val = [s for cid, s in samples.items() if cid in held]
            if not train or not val:
                raise ApplicationError(
                    f"Need labelled cells for both training ({len(train)}) and the evaluation "
                    f"set ({len(val)})."
                )
            init = model_version_checkpoint(active) if active is not None else None
            config = parse_train_config(_retrain_args(job), init_checkpoint=init)
            report(
                {
                    "stage": "training",
                    "percent": 0,
                    "log": f"{len(train)} training cells, {len(val)} evaluation cells",
                }
            )
            result = fit(train, val, config, init_checkpoint=init, progress=report)
            report(
                {
                    "stage": "evaluating",
                    "percent": 99,
                    "log": "evaluating on the fixed evaluation set",
                }
            )
            metrics = dict(result.metrics)
            if active is not None:
                metrics["active_on_evaluation_set"] = evaluate_samples(init, val) if init else {}
            ckpt_path = save_checkpoint(result.checkpoint, scratch / "checkpoint.pt")
            counts: dict[str, int] = defaultdict(int)
            for s in train:
                counts[str(s.code)] += 1
            version = model_version_register(
                checkpoint_path=ckpt_path,
                user=job.created_by,
                parent=active,
                metrics=metrics,
                training_snapshot={
                    "train_counts": dict(counts),
                    "evaluation_set": evaluation.name,
                    "evaluation_counts": evaluation.counts,
                    "max_label_id": Label.objects.order_by("-id")
                    .values_list("id", flat=True)
                    .first(),
                    "n_train": len(train),
                    "n_evaluation": len(val),
                },
                triggered_by=job.trigger,
            )
    except TrainingCancelled:
        return TrainingJob.objects.get(pk=job_id)
    except Exception as exc:
        logger.exception("training job %s failed", job_id)
        message = (
            exc.message if isinstance(exc, ApplicationError) else f"{type(exc).__name__}: {exc}"
        )
        with transaction.atomic():
            job = TrainingJob.objects.select_for_update().get(pk=job_id)
            job.log_tail = ("\n".join(log_lines) + "\n" + traceback.format_exc())[-LOG_TAIL_CHARS:]
            job.save(update_fields=["log_tail"])
            if job.status == TrainingJob.Status.RUNNING:
                _finish(job, TrainingJob.Status.FAILED, error=message)
        return job

    with transaction.atomic():
        job = TrainingJob.objects.select_for_update().get(pk=job_id)
        job.result_version = version
        job.progress = {"stage": "done", "percent": 100}
        job.save(update_fields=["result_version", "progress"])
        _finish(job, TrainingJob.Status.SUCCEEDED)
    # Promote on its own if the guard passes; otherwise it waits for an admin.
    from annotation.services.model_registry import model_version_promote

    try:
        model_version_promote(version_id=version.pk, user=None)
    except ApplicationError as exc:
        logger.info("candidate %s held back: %s", version.name, exc.message)
    return job


def retrain_is_due() -> tuple[bool, str]:
    """The scheduled rule: retrain only when enough new hematologist labels exist."""
    from annotation.services.routing import routing_config_get

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


def retrain_if_due() -> TrainingJob | None:
    due, why = retrain_is_due()
    logger.info("scheduled retraining: %s", why)
    if not due:
        return None
    try:
        return training_job_create(trigger=TrainingJob.Trigger.SCHEDULE, user=None)
    except ApplicationError as exc:
        logger.info("scheduled retraining skipped: %s", exc.message)
        return None
