"""Redis restarted while tasks are queued: what was queued survives (Redis with an
append-only file, as production runs it), the worker finishes the pipeline once Redis is
back, and meanwhile the web app answers: pages and the API work, /health/ says the queue
is down, and an upload stores its cells and says that their processing was not queued
(`manage.py score_pending` queues it afterwards).

Everything runs on a private redis-server the test starts and stops; never on the
system Redis."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.core.management import call_command
from rest_framework.authtoken.models import Token

from annotation.models import CellImage, Prediction, Segmentation
from annotation.services.imports import cells_import
from tests.annotation.api.conftest import jpeg
from tests.annotation.pipeline.fixtures import active_version, unlabelled_folder
from tests.annotation.pipeline.test_worker import wait_until
from tests.conftest import start_worker, wait_for_worker
from tests.faults.servers import PrivateRedis, http, web_server
from tests.processes import stop_process

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def private_redis(tmp_path: Path, redis_url: str) -> Iterator[PrivateRedis]:
    """A redis-server of the test's own, and this process's Celery app pointed at it."""
    from wbcportal.celery import app

    server = PrivateRedis(tmp_path / "redis")
    saved = (app.conf.broker_url, app.conf.result_backend, app.conf.task_always_eager)
    try:  # from the start: a failure while setting up must not leave the server running
        server.start()
        app.conf.update(broker_url=server.url, result_backend=server.url, task_always_eager=False)
        _forget_connections(app)
        yield server
    finally:
        server.stop()
        app.conf.update(broker_url=saved[0], result_backend=saved[1], task_always_eager=saved[2])
        _forget_connections(app)


def _forget_connections(app: Any) -> None:
    """Drop the app's broker and result connections, so the next use connects to the
    URL now configured."""
    app._pool = None
    app.amqp._producer_pool = None
    app._backend_cache = None
    app._local.__dict__.pop("backend", None)


def queued(server: PrivateRedis) -> int:
    client = redis.Redis(port=server.port)
    return int(client.llen("cpu")) + int(client.llen("gpu"))


def processed() -> int:
    return CellImage.objects.filter(processing="scored").count()


def test_queued_tasks_survive_a_redis_restart_and_the_app_answers_meanwhile(
    private_redis: PrivateRedis,
    tmp_path: Path,
    settings: Any,
    shared_data: Path,
    users: dict[str, Any],
) -> None:
    media = Path(str(settings.MEDIA_ROOT))
    active_version(tmp_path)
    token = Token.objects.get_or_create(user=users["admin"])[0].key

    # 1. Work is queued while no worker runs.
    first = cells_import(source=unlabelled_folder(shared_data, tmp_path / "smear", per_class=1))
    assert first.new_cells == 6 and first.as_dict()["processing_queued"] is True
    waiting = queued(private_redis)
    assert waiting >= 2  # a segmentation and a scoring task at least

    with web_server(redis_url=private_redis.url, media_root=media, log=tmp_path / "web.log") as url:
        # 2. Redis goes away.
        private_redis.stop()
        status, _, raw = http("GET", f"{url}/health/")
        health = json.loads(raw)
        assert status == 200 and health["broker"] == "unavailable"
        assert health["status"] == "degraded" and health["database"] == "ok"
        status, _, raw = http("GET", f"{url}/api/cases/", token=token)  # throttle is in Redis
        assert status == 200, raw
        status, _, raw = http("GET", f"{url}/api/queue/counts/", token=token)
        assert status == 200, raw

        boundary = "wbc-fault-boundary"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
                f'filename="during-outage.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
            ).encode()
            + jpeg(4242, size=(96, 96))
            + f"\r\n--{boundary}--\r\n".encode()
        )
        import urllib.request

        request = urllib.request.Request(
            f"{url}/api/cells/upload/",
            data=body,
            method="POST",
            headers={
                "Authorization": f"Token {token}",
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            },
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 201
            summary = json.loads(response.read())
        assert summary["new_cells"] == 1 and summary["processing_queued"] is False
        assert "score_pending" in summary["warning"]

        # 3. Redis is back, with what was queued before it went away.
        private_redis.start()
        assert queued(private_redis) == waiting
        status, _, raw = http("GET", f"{url}/health/")
        assert json.loads(raw)["broker"] == "redis"

    # 4. A worker finishes the queued pipeline; score_pending picks up the rest.
    log = tmp_path / "worker.log"
    from wbcportal.celery import app

    worker = start_worker(private_redis.url, media_root=media, log=log)
    try:
        wait_for_worker(app, worker, log)
        wait_until(lambda: processed() == 6, 180, "the queued cells to be processed", log)
        assert CellImage.objects.count() == 7 and processed() == 6
        out = io.StringIO()
        call_command("score_pending", stdout=out)
        wait_until(lambda: processed() == 7, 180, "the outage's upload to be processed", log)
    finally:
        stop_process(worker, timeout=30)
    assert Segmentation.objects.count() == 7 and Prediction.objects.count() == 7


def test_a_training_request_while_redis_is_down_fails_its_job_and_blocks_nothing(
    private_redis: PrivateRedis, tmp_path: Path, settings: Any, users: dict[str, Any]
) -> None:
    from annotation.models import TrainingJob
    from annotation.services.training.jobs import NOT_QUEUED

    token = Token.objects.get_or_create(user=users["admin"])[0].key
    media = Path(str(settings.MEDIA_ROOT))
    with web_server(redis_url=private_redis.url, media_root=media, log=tmp_path / "web.log") as url:
        private_redis.stop()
        status, headers, raw = http("POST", f"{url}/api/training-jobs/", token=token, body={})
        assert status == 503 and "retry-after" in headers, raw
        error = json.loads(raw)["error"]
        job = TrainingJob.objects.get()
        assert error["code"] == "queue_unavailable"
        assert f"training job {job.pk} could not be queued" in error["message"]
        assert "marked failed" in error["message"]
        # The job says why it never ran and holds no lock: nothing waits on Redis coming back.
        assert job.status == "failed" and job.error == NOT_QUEUED and job.lock is None

        private_redis.start()
        status, _, raw = http("POST", f"{url}/api/training-jobs/", token=token, body={})
        assert status == 201, raw
        retry = TrainingJob.objects.get(pk=json.loads(raw)["id"])
    assert retry.status == "queued" and retry.celery_task_id
    client = redis.Redis(port=private_redis.port)
    assert client.llen("gpu") == 1  # sent: a gpu worker runs it
