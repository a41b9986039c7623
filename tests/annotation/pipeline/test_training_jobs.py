"""Training jobs without running a training: the lock, cancel, watchdog, beat rule."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from annotation.errors import ApplicationError
from annotation.models import Case, CellImage, Label, TrainingJob
from annotation.services.routing import routing_config_update
from annotation.services.training import (
    retrain_if_due,
    retrain_is_due,
    training_job_cancel,
    training_job_create,
    training_jobs_fail_stale,
)
from annotation.services.users import user_create_with_role

pytestmark = pytest.mark.django_db


@pytest.fixture
def hematologist():
    return user_create_with_role(username="h", password="Long-pass-123", role="hematologist")


def _labels(n: int, annotator) -> None:
    case = Case.objects.get_or_create(accession_id="T")[0]
    start = CellImage.objects.count()
    for i in range(start, start + n):
        cell = CellImage.objects.create(
            case=case, image=f"c/{i}.jpg", sha256=f"{i:064x}", width=1, height=1
        )
        Label.objects.create(cell=cell, code="NE", source="hematologist", annotator=annotator)


def test_only_one_job_can_be_open_at_a_time() -> None:
    job = training_job_create(trigger="admin", user=None)
    with pytest.raises(ApplicationError) as err:
        training_job_create(trigger="api", user=None)
    assert (
        err.value.status == 409 and f"Training job {job.pk} is already queued" in err.value.message
    )
    training_job_cancel(job_id=job.pk, user=None)
    job.refresh_from_db()
    assert job.status == "cancelled" and job.lock is None
    assert training_job_create(trigger="api", user=None).pk != job.pk


def test_cancelling_a_finished_job_is_refused() -> None:
    job = training_job_create(trigger="admin", user=None)
    training_job_cancel(job_id=job.pk, user=None)
    with pytest.raises(ApplicationError, match="only a queued or running job can be cancelled"):
        training_job_cancel(job_id=job.pk, user=None)


def test_watchdog_fails_a_job_whose_worker_went_silent() -> None:
    job = training_job_create(trigger="admin", user=None)
    TrainingJob.objects.filter(pk=job.pk).update(
        status="running", heartbeat_at=timezone.now() - timedelta(minutes=30)
    )
    assert training_jobs_fail_stale(timeout_s=600) == [job.pk]
    job.refresh_from_db()
    assert job.status == "failed" and "stopped reporting" in job.error and job.lock is None
    # A fresh heartbeat is left alone.
    other = training_job_create(trigger="admin", user=None)
    TrainingJob.objects.filter(pk=other.pk).update(status="running", heartbeat_at=timezone.now())
    assert training_jobs_fail_stale(timeout_s=600) == []


def test_schedule_starts_training_only_past_the_label_threshold(hematologist) -> None:
    routing_config_update(user=None, retrain_min_new_labels=5)
    _labels(4, hematologist)
    due, why = retrain_is_due()
    assert not due and "4 new hematologist labels" in why
    assert retrain_if_due() is None and not TrainingJob.objects.exists()
    _labels(1, hematologist)
    job = retrain_if_due()
    assert job is not None and job.trigger == "schedule"
    # Labels older than the last successful training do not count again.
    TrainingJob.objects.filter(pk=job.pk).update(
        status="succeeded", lock=None, started_at=timezone.now(), finished_at=timezone.now()
    )
    assert retrain_is_due()[0] is False


def test_imported_labels_do_not_trigger_the_schedule() -> None:
    routing_config_update(user=None, retrain_min_new_labels=1)
    case = Case.objects.create(accession_id="I")
    cell = CellImage.objects.create(case=case, image="c/x.jpg", sha256="f" * 64, width=1, height=1)
    Label.objects.create(cell=cell, code="LY", source="imported")
    assert retrain_is_due()[0] is False
