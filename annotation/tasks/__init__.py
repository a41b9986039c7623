"""Celery tasks of the portal: ids in, one service call, idempotent.

Celery's autodiscovery imports ``annotation.tasks``; importing every submodule here is
what registers their tasks in each worker. Task names are part of the wire format
(queued messages and ``CELERY_TASK_ROUTES`` use them), so they keep the names they had
when the tasks lived in ``mlworker/tasks.py``.
"""

from annotation.tasks import exports, housekeeping, lis, pipeline, training

__all__ = ["exports", "housekeeping", "lis", "pipeline", "training"]
