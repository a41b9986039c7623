"""Cells the pipeline still owes work, and which of them nothing is working on (stranded).

The rule, per stage (segmentation on queue ``cpu``, scoring on ``gpu``). A cell is
*pending* while it lacks the stage's result:

- segmentation: no segmentation by the current method (``SEGMENTATION_METHOD``);
- scoring: no prediction by the active version, for the cells a new version re-scores
  (unlabelled ones and conflicts, as ``model_version_promote`` does). A labelled cell has
  nothing waiting on its prediction: it is never routed.

Failed cells are never pending. A pending cell is *stranded* when it is older than
``WBC_STRANDED_AFTER_SECONDS`` and the stage is idle: no task of the stage waits in its
broker queue, and the stage stored no result for that long either. The first condition
keeps a long backlog (10,000 imported cells in the queue) from being queued again and
again: while one task of the stage waits, the worker will come to it, and a re-queued
batch is itself such a task, so re-queueing happens at most once per idle spell. The
second leaves alone the batch a live worker is running (it stores results as it goes);
what is left is a task that died with its worker, or was never sent (a broker outage, a
crash between commit and send). Its message may still come back at the visibility
timeout; the services skip what is done, so that late copy changes nothing.

Without an answering broker nothing is judged stranded: a task could be waiting in a
queue that cannot be read, and nothing could be queued anyway (``/health/`` reports the
broker). The embedded default has no broker to read either; there ``manage.py
score_pending`` queues what a restart of the server left undone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from django.conf import settings
from django.db.models import Count, Min, Q, QuerySet
from django.utils import timezone

from annotation.broker import broker_has_waiting
from annotation.models import CellImage, ModelVersion, Prediction, Segmentation

Stage = Literal["segmentation", "scoring"]
STAGES: tuple[Stage, ...] = ("segmentation", "scoring")
STAGE_QUEUE: dict[Stage, str] = {"segmentation": "cpu", "scoring": "gpu"}
STAGE_TASKS: dict[Stage, frozenset[str]] = {
    "segmentation": frozenset({"mlworker.tasks.segment_cells"}),
    "scoring": frozenset({"mlworker.tasks.score_cells"}),
}


@dataclass(frozen=True)
class StageState:
    """One stage right now. ``stranded`` is empty unless the stage is idle."""

    stage: Stage
    waiting_in_queue: bool | None  # None: no broker, or it does not answer
    last_result_at: datetime | None
    idle: bool
    pending: QuerySet[CellImage]
    stranded: QuerySet[CellImage]


def _live_cells() -> QuerySet[CellImage]:
    return CellImage.objects.exclude(processing=CellImage.Processing.FAILED)


def _pending(stage: Stage, active: ModelVersion | None) -> QuerySet[CellImage]:
    from annotation.services.pipeline import SEGMENTATION_METHOD

    if stage == "segmentation":
        done = Segmentation.objects.filter(method_version=SEGMENTATION_METHOD)
        return _live_cells().exclude(pk__in=done.values("cell_id"))
    if active is None:  # nothing to score with: scoring owes nothing
        return CellImage.objects.none()
    return (
        _live_cells()
        .filter(Q(current_label__isnull=True) | Q(has_label_conflict=True))
        .exclude(pk__in=Prediction.objects.filter(model_version=active).values("cell_id"))
    )


def _last_result_at(stage: Stage, active: ModelVersion | None) -> datetime | None:
    # The newest row by id is the last one stored (upserts keep their id); ordering by id
    # reads one row from the primary key instead of scanning for the newest timestamp.
    if stage == "segmentation":
        return Segmentation.objects.order_by("-id").values_list("created_at", flat=True).first()
    if active is None:
        return None
    predictions = Prediction.objects.filter(model_version=active).order_by("-id")
    return predictions.values_list("created_at", flat=True).first()


def pipeline_stage_state(
    *, stage: Stage, now: datetime | None = None, stranded_after_s: int | None = None
) -> StageState:
    now = now or timezone.now()
    after = timedelta(
        seconds=settings.WBC_STRANDED_AFTER_SECONDS
        if stranded_after_s is None
        else stranded_after_s
    )
    active = ModelVersion.objects.active()
    pending = _pending(stage, active)
    waiting = broker_has_waiting(queue=STAGE_QUEUE[stage], names=STAGE_TASKS[stage])
    last = _last_result_at(stage, active)
    # No broker, or one that does not answer (None): the stage is not judged idle.
    idle = waiting is False and (last is None or last < now - after)
    stranded = pending.filter(created_at__lt=now - after) if idle else CellImage.objects.none()
    return StageState(
        stage=stage,
        waiting_in_queue=waiting,
        last_result_at=last,
        idle=idle,
        pending=pending,
        stranded=stranded,
    )


def pipeline_stranded_summary(*, now: datetime | None = None) -> dict[str, dict[str, int | None]]:
    """Per stage: how many cells are stranded and the oldest one's age in seconds; what
    ``/health/`` reports (cheap while the pipeline is busy: the cell query runs only for an
    idle stage)."""
    now = now or timezone.now()
    summary: dict[str, dict[str, int | None]] = {}
    for stage in STAGES:
        state = pipeline_stage_state(stage=stage, now=now)
        stranded = state.stranded.aggregate(n=Count("id"), oldest=Min("created_at"))
        summary[stage] = {
            "stranded": int(stranded["n"] or 0),
            "oldest_stranded_s": _age(now, stranded["oldest"]),
        }
    return summary


def pipeline_backlog(*, now: datetime | None = None) -> dict[str, dict[str, object]]:
    """Per stage, for ``manage.py queue_stats``: pending cells and the oldest one's age,
    whether a task waits in the queue, seconds since the last result, stranded cells."""
    now = now or timezone.now()
    out: dict[str, dict[str, object]] = {}
    for stage in STAGES:
        state = pipeline_stage_state(stage=stage, now=now)
        pending = state.pending.aggregate(n=Count("id"), oldest=Min("created_at"))
        stranded = state.stranded.aggregate(n=Count("id"), oldest=Min("created_at"))
        out[stage] = {
            "pending": int(pending["n"] or 0),
            "oldest_pending_s": _age(now, pending["oldest"]),
            "waiting_in_queue": state.waiting_in_queue,
            "last_result_s": _age(now, state.last_result_at),
            "stranded": int(stranded["n"] or 0),
            "oldest_stranded_s": _age(now, stranded["oldest"]),
        }
    return out


def _age(now: datetime, then: datetime | None) -> int | None:
    return int((now - then).total_seconds()) if then else None
