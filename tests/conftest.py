"""Shared fixtures: isolated media per test, real Redis and a real Celery worker process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.paths import REPO_ROOT, SHARED_DATA
from tests.processes import stop_process

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_service(name: str, available: bool) -> None:
    """In CI a missing service fails the test; on a laptop it skips with the reason."""
    if available:
        return
    message = f"{name} is not configured (see `make test`, scripts/service_env.py)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _isolated_media(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if "settings" not in request.fixturenames and not _uses_django(request):
        return
    settings = request.getfixturevalue("settings")
    settings.MEDIA_ROOT = str(tmp_path / "media")
    settings.DATA_DIR = tmp_path / "data"


def _uses_django(request: pytest.FixtureRequest) -> bool:
    return (
        any(
            name in request.fixturenames
            for name in ("db", "transactional_db", "client", "admin_client", "django_db_setup")
        )
        or request.node.get_closest_marker("django_db") is not None
    )


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"reference data not found at {SHARED_DATA}; set WBC_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("REDIS_URL", "")
    require_service("Redis (REDIS_URL)", bool(url))
    import redis

    client = redis.Redis.from_url(url)
    client.ping()
    client.flushdb()  # the tests' own database number: no stale tasks from an earlier run
    return url


def _test_database_url() -> str:
    """The URL of the database pytest-django created, for processes the tests start."""
    from django.db import connection

    params = connection.settings_dict
    user = params.get("USER") or ""
    password = f":{params['PASSWORD']}" if params.get("PASSWORD") else ""
    host = params.get("HOST") or "127.0.0.1"
    port = params.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{params['NAME']}"


def worker_env(
    redis_url: str, media_root: Path | None = None, extra: dict[str, str] | None = None
) -> dict[str, str]:
    from django.db import connection

    env = dict(os.environ)
    env["REDIS_URL"] = redis_url
    if connection.vendor == "postgresql":
        env["DATABASE_URL"] = _test_database_url()
    if media_root is not None:
        env["MEDIA_ROOT"] = str(media_root)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def start_worker(
    redis_url: str,
    *,
    queues: str = "cpu,gpu",
    media_root: Path | None = None,
    log: Path,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "celery", "-A", "wbcportal", "worker",
        "-Q", queues, "--pool", "solo", "--concurrency", "1",
        "--without-gossip", "--without-mingle", "--loglevel", "INFO",
    ]  # fmt: skip
    with log.open("ab") as fh:
        return subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=worker_env(redis_url, media_root, extra_env),
            stdout=fh,
            stderr=fh,
        )


def wait_for_worker(app_ping: object, proc: subprocess.Popen[bytes], log: Path) -> None:
    from wbcportal.celery import ping

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{log.read_text()[-3000:]}")
        try:
            ping.apply_async(args=["ready"], queue="cpu").get(timeout=2)
            return
        except Exception:  # not up yet
            time.sleep(0.5)
    raise RuntimeError(f"worker did not answer within 60 s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def celery_worker(
    redis_url: str, tmp_path: Path, settings: object, transactional_db: None
) -> Iterator[subprocess.Popen[bytes]]:
    """A real `celery worker` process on the test database and this test's media."""
    from wbcportal.celery import app

    app.conf.task_always_eager = False
    app.conf.broker_url = redis_url
    app.conf.result_backend = redis_url
    log = tmp_path / "worker.log"
    proc = start_worker(redis_url, media_root=Path(str(tmp_path / "media")), log=log)
    try:
        wait_for_worker(app, proc, log)
        yield proc
    finally:
        stop_process(proc)
