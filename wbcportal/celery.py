"""The Celery app. Queues: ``cpu`` (segmentation, imports) and ``gpu`` (scoring, training)."""

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wbcportal.settings")

# The task class sends eager tasks to a background thread in the embedded web server.
app = Celery("wbcportal", task_cls="wbcportal.embedded:EmbeddedTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [Queue("cpu"), Queue("gpu")]
# annotation/tasks/ holds every task that touches the database; mlworker is plain Python
# and has none. Task names still read "mlworker.tasks.*" (messages and routes use them).
app.autodiscover_tasks(["annotation"])


def _beat_schedule() -> dict[str, dict[str, object]]:
    from celery.schedules import crontab
    from django.conf import settings

    minute, hour, day, month, weekday = settings.WBC_RETRAIN_CRON.split()
    return {
        "retrain-if-due": {
            "task": "mlworker.tasks.retrain_if_due",
            "schedule": crontab(minute, hour, weekday, day, month),
            "options": {"queue": "cpu"},
        },
        "broadcast-queue-counts": {
            "task": "mlworker.tasks.broadcast_queue_counts",
            "schedule": 1.0,
            "options": {"queue": "cpu", "expires": 5},
        },
        # Reconciliation: leases, silent training jobs, lost training tasks, stranded cells
        # (annotation/tasks/housekeeping.py). Every run looks at the whole state, so runs
        # missed while the cpu worker was down are dropped, not made up one by one.
        "housekeeping": {
            "task": "mlworker.tasks.housekeeping",
            "schedule": 60.0,
            "options": {"queue": "cpu", "expires": 55},
        },
    }


@app.on_after_configure.connect
def _setup_beat(sender: Celery, **kwargs: object) -> None:
    sender.conf.beat_schedule = _beat_schedule()


@app.task(name="wbcportal.ping", ignore_result=False)  # the one task whose result is read
def ping(value: str) -> dict[str, object]:
    """Round trip used by health checks and tests: proves a worker consumed the queue."""
    return {"echo": value, "worker_pid": os.getpid()}
