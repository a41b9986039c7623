"""Running a training job in a Celery worker: from the labelled cells to a registered
candidate, which the promotion guard then promotes or holds back.

A job runs mlworker.train.fit on every current label (latest label per cell, imported
and adjudicated included, unresolved conflicts excluded), starting from the active
version's weights and retraining the final layers as the paper does. It is judged with
the active version on the same fixed evaluation set: both are scored on the same cells and
the job records, per class, the cells each got right and the discordant ones
(``metrics["paired_on_evaluation_set"]``, mlworker/paired.py), so the promotion guard can
tell a real drop from noise (annotation/rules.py).
"""

from __future__ import annotations

import logging
import shlex
import tempfile
import traceback
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from annotation.errors import ApplicationError
from annotation.models import CellImage, Label, ModelVersion, TrainingJob
from annotation.services.training.dataset import (
    LabelledCell,
    evaluation_set_get_or_create,
    evaluation_set_unjudged,
    gold_cells,
    labelled_cells,
)
from annotation.services.training.jobs import (
    WORKER_LOST,
    training_job_announce,
    training_job_fail_by_task,
    training_job_finish,
)
from annotation.storage import storage_path_for_training

if TYPE_CHECKING:
    from mlworker.data import Sample
    from mlworker.model import Checkpoint

logger = logging.getLogger(__name__)
LOG_TAIL_CHARS = 4000


class TrainingCancelled(Exception):
    """Raised from the progress report when the job was cancelled meanwhile: unwinds fit."""


def training_job_start_from_task(*, job_id: int, task_id: str, redelivered: bool) -> dict[str, Any]:
    """What the ``train_model`` task does with one delivery; returns the task's result.

    Only the task knows whether a delivery is a redelivery (``acks_late`` put it back after
    its worker died). A redelivered job that is still RUNNING was being trained by that
    dead worker: it is failed with the reason now, rather than by the watchdog minutes
    later, and never run twice. Any other delivery runs the job (a no-op unless QUEUED).
    """
    job = TrainingJob.objects.filter(pk=job_id).first()
    if job is None:
        return {"status": "missing"}
    if redelivered and job.status == TrainingJob.Status.RUNNING:
        training_job_fail_by_task(task_id=job.celery_task_id or task_id, reason=WORKER_LOST)
        return {"status": "failed", "reason": "worker lost"}
    job = training_job_run(job_id=job_id)
    return {"status": job.status, "version": job.result_version_id}


def _retrain_args(job: TrainingJob) -> list[str]:
    args = shlex.split(settings.WBC_RETRAIN_ARGS) + [str(a) for a in job.params.get("args", [])]
    if settings.WBC_TRUNK_CACHE_DIR and not any(a.startswith("--trunk-cache") for a in args):
        args += ["--trunk-cache", str(settings.WBC_TRUNK_CACHE_DIR)]
    return args


def _site_cells(scratch: Path) -> list[Sample]:
    """Every readable cell of this site, labelled or not: what ``--adapt-bn`` estimates
    the BatchNorm statistics on."""
    from mlworker.data import Sample

    names = (
        CellImage.objects.exclude(processing=CellImage.Processing.FAILED)
        .order_by("id")
        .values_list("image", flat=True)
    )
    return [Sample(path=storage_path_for_training(name=n, scratch=scratch)) for n in names]


def _evaluate_pair(
    *,
    active: Checkpoint,
    candidate: Checkpoint,
    samples: Sequence[Sample],
    include: Iterable[str],
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the active version's evaluation JSON, the paired table) on ``samples``.

    Both checkpoints are scored by the same path (``Scorer``, each with its own
    temperature), so row i is the same cell for both; that costs one more pass over the
    evaluation set than scoring the active version alone, and spares relying on how fit
    orders its validation images. The paired table is None if the two left out different
    unreadable images (a file changed between the passes): then no row pairing holds.
    """
    from mlworker.evaluate import scored_report
    from mlworker.paired import paired_table
    from mlworker.score import Scorer, score_labelled

    active_scorer = Scorer(active)
    on_active = score_labelled(active_scorer, samples, num_workers=0)
    candidate_scorer = Scorer(candidate)
    on_candidate = score_labelled(candidate_scorer, samples, num_workers=0)
    report = scored_report(on_active, active_scorer)
    if on_active.unreadable != on_candidate.unreadable or active_scorer.codes != (
        candidate_scorer.codes
    ):
        logger.warning("the two versions did not score the same cells; no paired figures")
        return report, None
    paired = paired_table(
        on_active.labels,
        on_active.probabilities,
        on_candidate.probabilities,
        active_scorer.codes,
        include=include,
    )
    return report, paired


def training_job_run(*, job_id: int) -> TrainingJob:
    """Run one job to the end (in a Celery worker). Never touches the active version."""

    from annotation.services.model_registry import (
        model_version_checkpoint,
        model_version_register,
    )
    from mlworker.data import Sample
    from mlworker.model import save_checkpoint
    from mlworker.train import fit, parse_train_config

    with transaction.atomic():
        job = TrainingJob.objects.select_for_update().get(pk=job_id)
        if job.status != TrainingJob.Status.QUEUED:
            logger.info("training job %s is %s; nothing to do", job_id, job.status)
            return job
        job.status = TrainingJob.Status.RUNNING
        job.started_at = job.heartbeat_at = timezone.now()
        job.progress = {"stage": "preparing", "percent": 0}
        job.save(update_fields=["status", "started_at", "heartbeat_at", "progress"])
        training_job_announce(job=job)

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
            training_job_announce(job=current, with_log=bool(line))

    try:
        cells = labelled_cells()
        if not cells:
            raise ApplicationError("There are no labelled cells to train on.")
        gold = gold_cells()
        evaluation = evaluation_set_get_or_create(cells, gold=gold)
        held = set(evaluation.cell_ids)
        # Active gold cells are never trained on; those in the set are judged by their
        # expert reference class.
        labelled_ids = {cell_id for cell_id, _, _, _ in cells}
        judged: list[LabelledCell] = cells + [g for g in gold if g[0] not in labelled_ids]
        active = ModelVersion.objects.active()
        with tempfile.TemporaryDirectory(prefix="wbc-train-") as tmp:
            scratch = Path(tmp)
            samples = {
                cell_id: Sample(
                    path=storage_path_for_training(name=name, scratch=scratch),
                    code=code,
                    patient=str(case_id),
                )
                for cell_id, name, code, case_id in judged
            }
            train = [s for cid, s in samples.items() if cid not in held and cid in labelled_ids]
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
            if config.cached_trunk and init is not None and config.init_from_checkpoint:
                from mlworker.train.cached import fit_cached

                result = fit_cached(
                    train,
                    val,
                    config,
                    init_checkpoint=init,
                    adapt=_site_cells(scratch) if config.adapt_bn else (),
                    progress=report,
                )
            else:
                result = fit(train, val, config, init_checkpoint=init, progress=report)
            report(
                {
                    "stage": "evaluating",
                    "percent": 99,
                    "log": "evaluating on the fixed evaluation set",
                }
            )
            metrics = dict(result.metrics)
            if active is not None and init is not None:
                active_report, paired = _evaluate_pair(
                    active=init,
                    candidate=result.checkpoint,
                    samples=val,
                    include=[str(s.code) for s in samples.values()],
                )
                metrics["active_on_evaluation_set"] = active_report
                if paired is not None:
                    # The guard uses these only against this very version (annotation/rules.py).
                    paired["active_version_id"] = active.pk
                    paired["active_version"] = active.name
                    metrics["paired_on_evaluation_set"] = paired
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
                    "evaluation_unjudged": evaluation_set_unjudged(evaluation),
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
                training_job_finish(job=job, status=TrainingJob.Status.FAILED, error=message)
        return job

    with transaction.atomic():
        job = TrainingJob.objects.select_for_update().get(pk=job_id)
        job.result_version = version
        job.progress = {"stage": "done", "percent": 100}
        job.save(update_fields=["result_version", "progress"])
        training_job_finish(job=job, status=TrainingJob.Status.SUCCEEDED)
    # Promote on its own if the guard passes; otherwise it waits for an admin.
    from annotation.services.model_registry import model_version_promote

    try:
        model_version_promote(version_id=version.pk, user=None)
    except ApplicationError as exc:
        logger.info("candidate %s held back: %s", version.name, exc.message)
    return job
