"""Websocket broadcasts. Only services call these, always from transaction.on_commit,
so nothing is announced that was rolled back."""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

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


def queue_changed() -> None:
    from annotation.selectors.review_queue import review_queue_counts

    broadcast(QUEUE_GROUP, "queue.counts", review_queue_counts())
