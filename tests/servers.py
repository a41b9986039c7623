"""The web app under uvicorn on a free loopback port, for the browser tests (tests/e2e)
and the fault tests (tests/faults)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import worker_env
from tests.paths import REPO_ROOT
from tests.processes import stop_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _health_answers(url: str, *, timeout: float, any_status: bool) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health/", timeout=timeout) as response:
            return any_status or response.status == 200
    except urllib.error.HTTPError:
        return any_status
    except OSError:
        return False


@contextmanager
def uvicorn_server(
    *,
    redis_url: str,
    media_root: Path,
    log: Path,
    port: int | None = None,
    extra_env: dict[str, str] | None = None,
    any_status: bool = False,
    probe_timeout: float = 2,
) -> Iterator[str]:
    """uvicorn (HTTP and websockets) on the test database, with its output in ``log`` and
    its data folder next to it; yields the base URL once /health/ answers 200, or answers
    at all with ``any_status`` (a server whose database or Redis is down)."""
    port = port or free_port()
    env = worker_env(
        redis_url,
        media_root,
        {
            "WBC_DATA_DIR": str(log.parent / "data"),
            "ALLOWED_HOSTS": "127.0.0.1",
            **(extra_env or {}),
        },
    )
    with serve(env, log, port=port, probe_timeout=probe_timeout, any_status=any_status) as url:
        yield url


@contextmanager
def serve(
    env: dict[str, str],
    log: Path,
    *,
    port: int | None = None,
    probe_timeout: float = 2,
    any_status: bool = False,
) -> Iterator[str]:
    """uvicorn with exactly ``env`` (any database and broker, or none: the embedded
    default), its output in ``log``; yields the base URL once /health/ answers."""
    port = port or free_port()
    cmd = [
        sys.executable, "-m", "uvicorn", "wbcportal.asgi:application",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    with log.open("ab") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=fh, stderr=fh)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{log.read_text()[-3000:]}")
            if _health_answers(url, timeout=probe_timeout, any_status=any_status):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start within 60 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        stop_process(proc, timeout=15)
