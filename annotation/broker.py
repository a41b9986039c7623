"""What the Celery broker (Redis) holds right now, read without consuming anything.

Housekeeping and the health check need to tell "waiting in the queue" from "lost": a cell
whose task waits in the ``cpu`` or ``gpu`` list will be processed, one whose task died
with its worker will not (until the visibility timeout, hours later). Kombu's Redis
transport keeps each queue as a list of JSON envelopes (``LPUSH``, consumed from the
tail), and the messages workers took but did not acknowledge yet in the ``unacked`` hash,
whatever became of those workers. Nothing here writes to Redis.

A Redis that does not answer reads as ``None``, which a caller must not take for an
empty queue. So does having no broker (the embedded default, ``memory://``): tasks wait
in the web server's own thread there (wbcportal/embedded.py), which this app cannot see.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from annotation.errors import broker_errors

logger = logging.getLogger(__name__)

# kombu.transport.redis: the key of a priority's list is the queue name, or the name,
# this separator and the priority step (3, 6, 9) for messages sent with a priority.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)
_UNACKED_KEY = "unacked"
_SCAN_CHUNK = 200


@dataclass(frozen=True)
class BrokerTask:
    """One task message: ``reserved`` when a worker took it (alive or not), else waiting."""

    name: str
    task_id: str
    args: list[Any]
    reserved: bool


def _client() -> Any | None:
    from celery import current_app

    url = str(current_app.conf.broker_url or "")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    import redis

    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def _task(raw: bytes | str, *, reserved: bool) -> BrokerTask | None:
    try:
        envelope = json.loads(raw)
        headers = envelope.get("headers") or {}
        body = envelope.get("body", "")
        if (envelope.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        decoded = json.loads(body)
        args = list(decoded[0]) if isinstance(decoded, list) and decoded else []
        return BrokerTask(
            name=str(headers.get("task", "")),
            task_id=str(headers.get("id", "")),
            args=args,
            reserved=reserved,
        )
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None  # not a Celery task message (another client's key): not ours to read


def _queue_tasks(client: Any, queue: str, names: frozenset[str]) -> Iterator[BrokerTask]:
    # A queue whose worker is down fills with beat's small periodic tasks (one a second):
    # a byte search for the task's name skips those without decoding them.
    wanted = [name.encode() for name in names]
    for key in (queue, *(f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in _PRIORITY_STEPS)):
        start = 0
        while True:
            chunk = client.lrange(key, start, start + _SCAN_CHUNK - 1)
            for raw in chunk:
                if not any(name in raw for name in wanted):
                    continue
                task = _task(raw, reserved=False)
                if task is not None and task.name in names:
                    yield task
            if len(chunk) < _SCAN_CHUNK:
                break
            start += _SCAN_CHUNK


def _reserved_tasks(client: Any, queue: str) -> Iterator[BrokerTask]:
    for raw in client.hvals(_UNACKED_KEY):
        try:
            message, _exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            continue
        if routing_key == queue:
            task = _task(json.dumps(message), reserved=True)
            if task is not None:
                yield task


def broker_tasks(
    *, queue: str, names: frozenset[str], reserved: bool = False
) -> list[BrokerTask] | None:
    """The messages for tasks named ``names`` waiting in ``queue`` (and, with
    ``reserved``, those workers took from it and have not acknowledged). ``None`` when
    there is no broker or it does not answer."""
    client = _client()
    if client is None:
        return None
    try:
        found = list(_queue_tasks(client, queue, names))
        if reserved:
            found += [t for t in _reserved_tasks(client, queue) if t.name in names]
    except broker_errors():
        logger.warning("could not read the broker's %s queue", queue)
        return None
    return found


def broker_has_waiting(*, queue: str, names: frozenset[str]) -> bool | None:
    """Whether a message for one of ``names`` waits in ``queue``: stops at the first
    found, so a long backlog costs one chunk. ``None``: no broker, or it does not answer."""
    client = _client()
    if client is None:
        return None
    try:
        return any(True for _ in _queue_tasks(client, queue, names))
    except broker_errors():
        logger.warning("could not read the broker's %s queue", queue)
        return None


def broker_queue_lengths(*, queues: tuple[str, ...] = ("cpu", "gpu")) -> dict[str, int] | None:
    """Messages waiting per queue (every task kind); ``None`` without an answering broker."""
    client = _client()
    if client is None:
        return None
    try:
        return {
            queue: sum(
                int(client.llen(key))
                for key in (queue, *(f"{queue}{_PRIORITY_SEPARATOR}{s}" for s in _PRIORITY_STEPS))
            )
            for queue in queues
        }
    except broker_errors():
        return None
