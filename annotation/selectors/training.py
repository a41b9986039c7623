"""Reading training jobs (started, run and cancelled by annotation/services/training/)."""

from __future__ import annotations

from django.db.models import QuerySet

from annotation.errors import get_or_404
from annotation.models import TrainingJob


def training_job_list() -> QuerySet[TrainingJob]:
    """Jobs newest first, with the version each produced and who started it."""
    return TrainingJob.objects.select_related("result_version", "created_by").order_by(
        "-created_at", "-id"
    )


def training_job_get(*, job_id: int) -> TrainingJob:
    return get_or_404(training_job_list(), what="Training job", pk=job_id)
