"""Stopping the child processes tests and benchmarks start (servers, Celery workers)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 20) -> None:
    """SIGTERM, wait up to ``timeout`` seconds for a clean exit, then SIGKILL (and reap)."""
    stop_processes([] if proc is None else [proc], timeout)


def stop_processes(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 20) -> None:
    """``stop_process`` for several at once: all are asked to stop before any is waited
    for, so a group of workers takes one ``timeout`` at most, not one each."""
    procs = [p for p in procs if p.poll() is None]
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
