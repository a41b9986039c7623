"""A cpu worker killed (SIGKILL) mid-segmentation and a gpu worker killed mid-scoring, with
the timeouts as shipped: the other batches finish on the workers that replace them, and
housekeeping (beat, every minute) queues the killed batches' cells again once nothing has
worked on them for ``WBC_STRANDED_AFTER_SECONDS``. Every cell ends segmented, scored and
routed exactly once, within minutes, while the killed tasks' messages still wait for the
visibility timeout (6 h 10 min), whose late redelivery would find the work done.

To kill each worker inside a task, not between two, the test holds an exclusive lock on
the table the task reads first; both workers block on it, holding their batch.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings

from annotation.models import CellImage, Prediction, ReviewItem, Segmentation
from annotation.rules import route_reasons, weak_classes
from annotation.selectors.routing import routing_config_get
from annotation.services.imports import cells_import
from annotation.services.routing import routing_config_update
from tests.annotation.pipeline.fixtures import active_version, unlabelled_folder
from tests.annotation.pipeline.test_worker import wait_until
from tests.conftest import _test_database_url, start_worker
from tests.faults.servers import start_beat
from tests.processes import stop_processes

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

LOCKED = {"annotation_segmentation", "annotation_prediction"}
CONVERGES_WITHIN_S = 300


def _blocked_on(locker: Any) -> set[str]:
    """The tables some other session of this database waits to lock."""
    rows = locker.execute(
        "SELECT DISTINCT c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
        "WHERE NOT l.granted AND l.database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())"
    ).fetchall()
    return {row[0] for row in rows}


def test_workers_killed_mid_segmentation_and_mid_scoring_converge_by_themselves(
    redis_url: str, tmp_path: Path, shared_data: Path, settings: Any
) -> None:
    import psycopg
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (DATABASE_URL): the workers are held by a table lock")
    assert django_settings.WBC_STRANDED_AFTER_SECONDS == 120, "run with the shipped timeouts"
    assert "WBC_VISIBILITY_TIMEOUT" not in os.environ
    broker = redis.Redis.from_url(redis_url)
    broker.flushdb()  # no tasks left over from other tests
    version = active_version(tmp_path)
    routing_config_update(user=None, audit_rate=0.0, confidence_threshold=0.8)
    settings.WBC_SEGMENT_BATCH = settings.WBC_SCORE_BATCH = 8  # three batches per stage
    summary = cells_import(source=unlabelled_folder(shared_data, tmp_path / "smear", per_class=4))
    ids, n = summary.cell_ids, summary.new_cells
    assert n == 24
    media, log = Path(settings.MEDIA_ROOT), tmp_path / "workers.log"

    # 1. Each worker takes its first batch and blocks inside it; then both are killed.
    with psycopg.connect(_test_database_url()) as locker:
        locker.execute(
            "LOCK TABLE annotation_segmentation, annotation_prediction IN ACCESS EXCLUSIVE MODE"
        )
        first = [
            start_worker(redis_url, queues=q, media_root=media, log=log) for q in ("cpu", "gpu")
        ]
        try:
            wait_until(lambda: _blocked_on(locker) >= LOCKED, 120, "both workers in a task", log)
            for proc in first:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        finally:
            for proc in first:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        locker.rollback()  # releases the lock
    killed_at = time.monotonic()
    assert broker.hlen("unacked") == 2  # the killed batches, held until the visibility timeout
    assert not Segmentation.objects.exists() and not Prediction.objects.exists()

    # 2. Replacement workers and beat, as a supervisor would restart them; nothing else.
    procs = [start_worker(redis_url, queues=q, media_root=media, log=log) for q in ("cpu", "gpu")]
    procs.append(start_beat(redis_url, workdir=tmp_path / "beat", log=log))
    try:
        wait_until(
            lambda: (
                Segmentation.objects.count() == n
                and Prediction.objects.filter(model_version=version).count() == n
                and not CellImage.objects.exclude(processing="scored").exists()
            ),
            CONVERGES_WITHIN_S,
            "every cell segmented and scored",
            log,
        )
        converged_s = time.monotonic() - killed_at
        wait_until(lambda: ReviewItem.objects.exists(), 30, "routing", log)
    finally:
        stop_processes(procs, timeout=30)
    text = log.read_text()
    assert "stranded in segmentation" in text and "stranded in scoring" in text, text[-3000:]
    assert broker.hlen("unacked") == 2  # not redelivered: reconciliation did it
    broker.flushdb()

    # 3. Exactly once: one segmentation and one prediction per cell, one open item per
    # cell that needs a person, with the reasons its prediction gives.
    assert sorted(Segmentation.objects.values_list("cell_id", flat=True)) == sorted(ids)
    assert sorted(Prediction.objects.values_list("cell_id", flat=True)) == sorted(ids)
    config = routing_config_get()
    weak = weak_classes(version, config.weak_class_tpr)
    for prediction in Prediction.objects.select_related("cell"):
        expected = route_reasons(
            prediction=prediction, config=config, weak=weak, has_conflict=False
        )
        items = list(ReviewItem.objects.filter(cell=prediction.cell))
        assert [i.reasons for i in items] == ([expected] if expected else [])
    assert converged_s < CONVERGES_WITHIN_S
