"""Reconciliation (housekeeping): stranded cells are reported and queued again, a backlog
waiting in the queue or a batch a worker is storing is left alone, and a queued training
job whose task is not in the broker is sent again. Against the real Redis broker; the
tasks are only queued, never run (the fault tests in tests/faults/ run them)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.core.management import call_command
from django.utils import timezone

from annotation.broker import broker_tasks
from annotation.models import Case, CellImage, Label, ModelVersion, Segmentation, TrainingJob
from annotation.selectors.pipeline import pipeline_stranded_summary
from annotation.services.pipeline import (
    SEGMENTATION_METHOD,
    cells_enqueue_segmentation,
    cells_reconcile,
)
from annotation.services.training import training_job_create, training_jobs_requeue_lost
from mlworker.taxonomy import CODES

pytestmark = pytest.mark.django_db

SEGMENT = frozenset({"mlworker.tasks.segment_cells"})
SCORE = frozenset({"mlworker.tasks.score_cells"})


@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis]:
    """The tests' Redis database with empty queues, emptied again afterwards: what is
    queued here is never run."""
    client = redis.Redis.from_url(redis_url)
    client.delete("cpu", "gpu", "unacked", "unacked_index")
    yield client
    client.delete("cpu", "gpu", "unacked", "unacked_index")


def _cells(n: int, *, age_s: int, label: str | None = None) -> list[int]:
    case = Case.objects.get_or_create(accession_id="R")[0]
    ids = []
    for _ in range(n):
        i = CellImage.objects.count()
        cell = CellImage.objects.create(
            case=case, image=f"c/{i}.jpg", sha256=f"{i:064x}", width=1, height=1
        )
        if label:
            current = Label.objects.create(cell=cell, code=label, source="imported")
            CellImage.objects.filter(pk=cell.pk).update(current_label=current)
        ids.append(cell.pk)
    CellImage.objects.filter(pk__in=ids).update(
        created_at=timezone.now() - timedelta(seconds=age_s)
    )
    return ids


def _queued_ids(names: frozenset[str], queue: str) -> list[int]:
    tasks = broker_tasks(queue=queue, names=names) or []
    return sorted(i for t in tasks for i in t.args[0])


def test_stranded_cells_degrade_health_and_are_queued_again_once(
    broker: redis.Redis, client: Any, django_capture_on_commit_callbacks: Any
) -> None:
    stranded = _cells(3, age_s=600)
    _cells(2, age_s=10)  # younger than the threshold: not stranded yet
    summary = pipeline_stranded_summary()
    assert summary["segmentation"]["stranded"] == 3
    assert summary["segmentation"]["oldest_stranded_s"] >= 600
    assert summary["scoring"]["stranded"] == 0  # no active version: scoring owes nothing
    health = client.get("/health/")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "degraded" and body["broker"] == "redis"
    assert body["pipeline"]["segmentation"]["stranded"] == 3

    with django_capture_on_commit_callbacks(execute=True):
        assert cells_reconcile() == {"segmentation": 3, "scoring": 0}
    assert _queued_ids(SEGMENT, "cpu") == stranded
    # Queued again: the cells wait behind a task now, so nothing is queued twice and
    # the check is green.
    with django_capture_on_commit_callbacks(execute=True):
        assert cells_reconcile() == {"segmentation": 0, "scoring": 0}
    assert _queued_ids(SEGMENT, "cpu") == stranded
    assert client.get("/health/").json()["status"] == "ok"

    out = io.StringIO()
    call_command("queue_stats", "--json", stdout=out)
    stats = json.loads(out.getvalue())
    assert stats["pipeline"]["segmentation"]["pending"] == 5
    assert stats["pipeline"]["segmentation"]["waiting_in_queue"] is True
    assert stats["pipeline"]["segmentation"]["stranded"] == 0
    assert stats["broker_queues"]["cpu"] >= 1


def test_a_backlog_waiting_in_the_queue_is_not_stranded(
    broker: redis.Redis, django_capture_on_commit_callbacks: Any
) -> None:
    ids = _cells(4, age_s=3600)
    with django_capture_on_commit_callbacks(execute=True):
        cells_enqueue_segmentation(cell_ids=ids[:1])  # one batch still waiting for a worker
    assert pipeline_stranded_summary()["segmentation"]["stranded"] == 0
    with django_capture_on_commit_callbacks(execute=True):
        assert cells_reconcile()["segmentation"] == 0
    assert _queued_ids(SEGMENT, "cpu") == ids[:1]


def test_a_stage_storing_results_is_not_stranded(broker: redis.Redis) -> None:
    """A live worker's batch stores its results as it goes: its cells are left to it."""
    ids = _cells(4, age_s=3600)
    Segmentation.objects.create(cell_id=ids[0], method_version=SEGMENTATION_METHOD, status="ok")
    assert pipeline_stranded_summary()["segmentation"]["stranded"] == 0
    Segmentation.objects.update(created_at=timezone.now() - timedelta(seconds=600))
    assert pipeline_stranded_summary()["segmentation"]["stranded"] == 3


def test_scoring_reconciles_the_cells_a_new_version_scores(
    broker: redis.Redis, django_capture_on_commit_callbacks: Any
) -> None:
    ModelVersion.objects.create(
        name="v-active", arch="resnet18", class_codes=list(CODES), status="active"
    )
    unlabelled = _cells(2, age_s=600)
    labelled = _cells(1, age_s=600, label="NE")
    for cell_id in [*unlabelled, *labelled]:
        Segmentation.objects.create(
            cell_id=cell_id, method_version=SEGMENTATION_METHOD, status="ok"
        )
    Segmentation.objects.update(created_at=timezone.now() - timedelta(seconds=600))
    # A labelled cell is never routed: its prediction is nobody's wait.
    assert pipeline_stranded_summary()["scoring"]["stranded"] == 2
    with django_capture_on_commit_callbacks(execute=True):
        assert cells_reconcile() == {"segmentation": 0, "scoring": 2}
    tasks = broker_tasks(queue="gpu", names=SCORE) or []
    assert [t.args for t in tasks] == [[unlabelled, None]]  # the version active when it runs


def test_a_queued_job_whose_task_is_not_in_the_broker_is_sent_again(broker: redis.Redis) -> None:
    job = training_job_create(trigger="admin", user=None)  # the test's transaction: never sent
    assert training_jobs_requeue_lost() == []  # just opened: its request sends it
    TrainingJob.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    assert training_jobs_requeue_lost() == [job.pk]
    job.refresh_from_db()
    sent = broker_tasks(queue="gpu", names=frozenset({"mlworker.tasks.train_model"})) or []
    assert [(t.task_id, t.args) for t in sent] == [(job.celery_task_id, [job.pk])]
    assert training_jobs_requeue_lost() == []  # waiting in the queue now: left alone
