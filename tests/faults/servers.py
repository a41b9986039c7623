"""Real processes for the fault tests: the web app under uvicorn, Celery beat, and a
private redis-server the test may stop and start (never the system Redis on 6379)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.paths import REPO_ROOT
from tests.processes import stop_process
from tests.servers import free_port, uvicorn_server


def http(
    method: str, url: str, *, token: str | None = None, body: Any = None, timeout: float = 30
) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Token {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return (
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                response.read(),
            )
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


@contextmanager
def web_server(
    *, redis_url: str, media_root: Path, log: Path, extra_env: dict[str, str] | None = None
) -> Iterator[str]:
    """uvicorn on a free port; yields its base URL once it answers /health/ at all."""
    with uvicorn_server(
        redis_url=redis_url,
        media_root=media_root,
        log=log,
        extra_env=extra_env,
        any_status=True,
        # with the pool, an unreachable database answers only after its 10 s wait
        probe_timeout=30,
    ) as url:
        yield url


class PrivateRedis:
    """redis-server on a free port with an append-only file, so what was queued survives
    a restart as it does on a production Redis with persistence."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        log = (self.workdir / "redis.log").open("ab")
        cmd = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir),
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        import redis

        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("private redis-server did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


def start_beat(redis_url: str, *, workdir: Path, log: Path) -> subprocess.Popen[bytes]:
    """``celery beat`` as production runs it (wbcportal/celery.py's schedule: housekeeping
    every minute), its schedule file in ``workdir``. Stop it with ``stop_process``."""
    from tests.conftest import worker_env

    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "celery", "-A", "wbcportal", "beat", "--loglevel", "INFO",
        "--schedule", str(workdir / "beat-schedule"), "--pidfile", "",
    ]  # fmt: skip
    with log.open("ab") as fh:
        return subprocess.Popen(cmd, cwd=REPO_ROOT, env=worker_env(redis_url), stdout=fh, stderr=fh)
