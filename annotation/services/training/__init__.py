"""Retraining: jobs and their lock, the data they learn from, the run, the schedule.

- ``jobs``: open (one open job at a time), cancel, fail (watchdog, dead task, not
  queued), send again (a lost task), announce;
- ``dataset``: the labelled cells and the fixed evaluation set (chosen with the CLI's
  splitter, mlworker.train.splits, grouped by case);
- ``run``: a job from labelled cells to a registered candidate (in a Celery worker), and
  what the task does with a redelivery;
- ``schedule``: the beat rule, retrain once enough new hematologist labels exist.

Everything callers use is re-exported here: ``from annotation.services.training import ...``.
"""

from annotation.services.training.dataset import (
    EVALUATION_FRACTION,
    EVALUATION_SET,
    evaluation_set_get_or_create,
    labelled_cells,
)
from annotation.services.training.jobs import (
    WORKER_LOST,
    training_job_cancel,
    training_job_create,
    training_job_fail_by_task,
    training_jobs_fail_stale,
    training_jobs_requeue_lost,
)
from annotation.services.training.run import (
    LOG_TAIL_CHARS,
    TrainingCancelled,
    training_job_run,
    training_job_start_from_task,
)
from annotation.services.training.schedule import (
    retrain_after_labels,
    retrain_after_labels_is_due,
    retrain_if_due,
    retrain_is_due,
)

__all__ = [
    "EVALUATION_FRACTION",
    "EVALUATION_SET",
    "LOG_TAIL_CHARS",
    "WORKER_LOST",
    "TrainingCancelled",
    "evaluation_set_get_or_create",
    "labelled_cells",
    "retrain_after_labels",
    "retrain_after_labels_is_due",
    "retrain_if_due",
    "retrain_is_due",
    "training_job_cancel",
    "training_job_create",
    "training_job_fail_by_task",
    "training_job_run",
    "training_job_start_from_task",
    "training_jobs_fail_stale",
    "training_jobs_requeue_lost",
]
