"""The Celery app. Queues: ``cpu`` (segmentation, imports) and ``gpu`` (scoring, training)."""

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wbcportal.settings")

app = Celery("wbcportal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [Queue("cpu"), Queue("gpu")]
app.autodiscover_tasks(["annotation", "mlworker"])


@app.task(name="wbcportal.ping")
def ping(value: str) -> dict[str, object]:
    """Round trip used by health checks and tests: proves a worker consumed the queue."""
    return {"echo": value, "worker_pid": os.getpid()}
