"""Websocket broadcasts. Only services call these, always from transaction.on_commit,
so nothing is announced that was rolled back."""

from __future__ import annotations

import logging
import weakref
from typing import Any

from asgiref.local import Local
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import cache
from django.db import transaction

logger = logging.getLogger(__name__)

QUEUE_GROUP = "queue"
JOBS_GROUP = "jobs"
JOB_LOGS_GROUP = "jobs.logs"  # admins only


def broadcast(group: str, event: str, payload: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(
            group, {"type": "portal.event", "event": event, "data": payload}
        )
    except Exception:  # a missing Redis must never fail the write that triggered this
        logger.warning("could not broadcast %s to %s", event, group, exc_info=True)


QUEUE_DIRTY_KEY = "queue-counts-dirty"


def queue_changed() -> None:
    """The queue changed (called in on_commit). Counting the queue costs a few queries,
    too much for every label under load: with a broker the counts are marked dirty and
    the ``broadcast_queue_counts`` beat task sends them once a second; in the embedded
    default (no worker, no beat) they are sent at once."""
    if settings.CELERY_TASK_ALWAYS_EAGER:
        queue_counts_broadcast()
        return
    try:
        cache.set(QUEUE_DIRTY_KEY, 1, timeout=None)
    except Exception:  # a cache outage must not fail the write that triggered this
        logger.warning("could not mark the queue counts dirty", exc_info=True)


class _QueueMark:
    """One pending ``queue_changed`` for one transaction, registered with ``on_commit``.

    Django's on-commit list holds the only strong reference. When the transaction (or the
    savepoint it was registered in) rolls back, Django drops those callbacks, the mark is
    freed and the weak reference ``queue_changed_on_commit`` keeps goes dead: a rolled-back
    transaction can never suppress the next one's mark. When it commits, the mark runs and
    says so (``ran``), so the next transaction registers its own.
    """

    __slots__ = ("__weakref__", "ran")

    def __init__(self) -> None:
        self.ran = False

    def __call__(self) -> None:
        self.ran = True
        queue_changed()


# Scoped like Django's own connections (per thread, per async context), so each mark is
# looked up on the connection whose transaction holds it.
_pending = Local()


def queue_changed_on_commit() -> None:
    """``queue_changed`` when the current transaction commits, once however many changes
    the transaction makes (a submit closes its item and labels the cell: two changes, one
    mark in Redis)."""
    ref: weakref.ref[_QueueMark] | None = getattr(_pending, "mark", None)
    mark = ref() if ref is not None else None
    if mark is not None and not mark.ran:
        return  # this transaction already marks the queue on commit
    mark = _QueueMark()
    _pending.mark = weakref.ref(mark)
    transaction.on_commit(mark)  # outside a transaction this runs it at once


def queue_counts_broadcast() -> None:
    from annotation.selectors.review_queue import review_queue_counts

    broadcast(QUEUE_GROUP, "queue.counts", review_queue_counts())


def queue_counts_flush() -> bool:
    """Send the counts if something changed since the last send; True if sent."""
    if not cache.get(QUEUE_DIRTY_KEY):
        return False
    cache.delete(QUEUE_DIRTY_KEY)
    queue_counts_broadcast()
    return True
