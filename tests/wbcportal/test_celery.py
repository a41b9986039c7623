"""A task goes through Redis to a separate worker process and comes back."""

from __future__ import annotations

import os

from wbcportal.celery import ping


def test_round_trip_through_redis_to_a_real_worker_process(celery_worker) -> None:
    result = ping.apply_async(args=["hello"], queue="gpu").get(timeout=30)
    assert result["echo"] == "hello"
    assert result["worker_pid"] == celery_worker.pid
    assert result["worker_pid"] != os.getpid()
