"""The embedded default's worker thread (wbcportal/embedded.py): in the web server without
a broker, a sent task runs in the background, one at a time and in order, after the
transaction that sent it commits; commands keep running tasks inline."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import transaction

from annotation.models import Case
from wbcportal import embedded
from wbcportal.celery import app

runs: list[dict[str, Any]] = []


@app.task(name="tests.embedded.record")
def record(value: int, pause: float = 0.0) -> int:
    started = time.monotonic()
    time.sleep(pause)
    runs.append(
        {
            "value": value,
            "thread": threading.current_thread().name,
            "start": started,
            "end": time.monotonic(),
        }
    )
    return value


@app.task(name="tests.embedded.fail")
def fail() -> None:
    raise RuntimeError("this task fails on purpose")


@app.task(name="tests.embedded.count_cases")
def count_cases(accession_id: str) -> None:
    runs.append({"value": Case.objects.filter(accession_id=accession_id).count()})


@pytest.fixture
def eager() -> Iterator[None]:
    """Tasks without a broker, as in the embedded default (the tests run with Redis)."""
    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    runs.clear()
    try:
        yield
    finally:
        assert embedded.drain(timeout=30)
        app.conf.task_always_eager = before


@pytest.fixture
def in_background(eager: None, settings: Any) -> None:
    settings.WBC_TASKS_IN_BACKGROUND = True


def test_sent_tasks_run_in_one_background_thread_in_order_one_at_a_time(
    in_background: None,
) -> None:
    sent = time.monotonic()
    results = [record.delay(i, pause=0.2) for i in range(3)]
    assert time.monotonic() - sent < 0.2  # the caller did not wait for the first task
    assert all(r.id for r in results) and len({r.id for r in results}) == 3
    assert embedded.drain(timeout=30)
    assert [r["value"] for r in runs] == [0, 1, 2]
    assert {r["thread"] for r in runs} == {"embedded-worker"}
    for before, after in itertools.pairwise(runs):
        assert after["start"] >= before["end"]  # one at a time, like a solo worker


def test_a_failing_task_does_not_stop_the_ones_after_it(in_background: None) -> None:
    fail.delay()
    record.delay(7)
    assert embedded.drain(timeout=30)
    assert [r["value"] for r in runs] == [7]


@pytest.mark.django_db(transaction=True)
def test_a_task_sent_on_commit_runs_after_the_commit_and_sees_the_rows(
    in_background: None,
) -> None:
    with transaction.atomic():
        Case.objects.create(accession_id="EMBEDDED-1")
        count_cases.delay_on_commit("EMBEDDED-1")
        assert embedded.worker.pending() == 0  # not sent before the commit
    assert embedded.drain(timeout=30)
    assert runs == [{"value": 1}]


def test_without_the_web_server_flag_tasks_still_run_inline(eager: None, settings: Any) -> None:
    settings.WBC_TASKS_IN_BACKGROUND = False
    assert record.delay(3).get() == 3
    assert [(r["value"], r["thread"]) for r in runs] == [(3, threading.current_thread().name)]
