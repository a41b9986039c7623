"""The embedded default's worker: in-process Celery tasks run one at a time in a
background thread of the web server, so a request returns at once.

Without ``REDIS_URL`` there is no broker and no worker, and Celery runs a task eagerly,
inside ``delay()``. In the web server that meant the request that started a training
waited for the whole training, and its progress reached nobody while it ran. Here
``delay()`` (and ``delay_on_commit``, which calls it once the transaction commits) hands
the task to one daemon thread instead, which runs ``task.apply(...)`` as a solo worker
would: in order, one at a time, on its own database connection (closed after each task,
as a worker does between tasks).

Only the web server uses it (wbcportal/asgi.py sets ``WBC_TASKS_IN_BACKGROUND``);
management commands such as ``load_demo`` keep running tasks inline, because what they
print next depends on the task having run. With a broker (``REDIS_URL``) nothing here is
used.

Websocket broadcasts from a task must run on the server's event loop: the in-memory
channel layer's queues belong to that loop and are not thread-safe. A request thread
knows the loop (asgiref records it for ``async_to_sync``); the loop is taken from the
thread that sends a task and given to the worker thread, so its broadcasts reach the
browser exactly as a request's do.

``drain()`` waits until every sent task has run: for tests, and for anything else that
must see a task's result.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import SyncToAsync
from celery.contrib.django.task import DjangoTask
from celery.result import AsyncResult
from celery.utils import uuid
from django.conf import settings

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    run: Callable[[], object]
    name: str
    loop: asyncio.AbstractEventLoop | None = field(default=None)


class EmbeddedWorker:
    """One daemon thread that runs jobs in the order they were sent.

    Daemon, so stopping the server (Ctrl-C) does not wait for a long training: a job cut
    short is what a killed worker leaves, and the training watchdog fails it later."""

    def __init__(self) -> None:
        self._jobs: deque[_Job] = deque()
        self._lock = threading.Condition()
        self._unfinished = 0
        self._thread: threading.Thread | None = None

    def submit(self, run: Callable[[], object], *, name: str) -> None:
        job = _Job(run=run, name=name, loop=_server_loop())
        with self._lock:
            self._jobs.append(job)
            self._unfinished += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._work, name="embedded-worker", daemon=True
                )
                self._thread.start()
            self._lock.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every job sent so far (and any they send) has run; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self._unfinished == 0, timeout=timeout)

    def pending(self) -> int:
        with self._lock:
            return self._unfinished

    def _work(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: bool(self._jobs))
                job = self._jobs.popleft()
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._unfinished -= 1
                    self._lock.notify_all()

    def _run(self, job: _Job) -> None:
        from django.db import connections

        _use_server_loop(job.loop)
        try:
            job.run()
        except Exception:  # a failed task must not stop the worker; Celery logged it too
            logger.exception("in-process task %s failed", job.name)
        finally:
            connections.close_all()


def _server_loop() -> asyncio.AbstractEventLoop | None:
    """The web server's event loop, as asgiref recorded it for this (request) thread."""
    if getattr(SyncToAsync.threadlocal, "main_event_loop_pid", None) != os.getpid():
        return None
    loop: asyncio.AbstractEventLoop | None = getattr(
        SyncToAsync.threadlocal, "main_event_loop", None
    )
    return loop


def _use_server_loop(loop: asyncio.AbstractEventLoop | None) -> None:
    """Let ``async_to_sync`` in this thread run on the server's loop, as in a request
    thread (asgiref's ``SyncToAsync.thread_handler`` sets the same two values)."""
    if loop is None or loop.is_closed():
        return
    SyncToAsync.threadlocal.main_event_loop = loop
    SyncToAsync.threadlocal.main_event_loop_pid = os.getpid()


worker = EmbeddedWorker()


def drain(timeout: float | None = None) -> bool:
    """Wait for the in-process tasks sent so far to finish; False if ``timeout`` passed."""
    return worker.drain(timeout)


def in_background() -> bool:
    return bool(getattr(settings, "WBC_TASKS_IN_BACKGROUND", False))


class EmbeddedTask(DjangoTask):  # type: ignore[misc]  # celery is untyped
    """The app's task class (Celery's Django task, which adds ``delay_on_commit``): with
    eager execution and ``WBC_TASKS_IN_BACKGROUND``, a sent task goes to the background
    worker instead of running in the caller."""

    def apply_async(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: Any = None,
        **options: Any,
    ) -> Any:
        if not (self.app.conf.task_always_eager and in_background()):
            return super().apply_async(
                args, kwargs, task_id, producer, link, link_error, shadow, **options
            )
        task_id = task_id or uuid()
        call_args, call_kwargs = tuple(args or ()), dict(kwargs or {})

        def run() -> None:
            self.apply(
                call_args,
                call_kwargs,
                task_id=task_id,
                link=link,
                link_error=link_error,
                throw=False,  # logged by Celery; the next task still runs
            )

        worker.submit(run, name=f"{self.name}[{task_id}]")
        return AsyncResult(task_id, app=self.app)
