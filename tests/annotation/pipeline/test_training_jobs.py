"""Training jobs without running a training: the lock, cancel, watchdog, beat rule, the
fixed evaluation set and what the task does with a redelivery."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from annotation.errors import ApplicationError
from annotation.models import Case, CellImage, EvaluationSet, Label, TrainingJob
from annotation.services.labels import cell_label_create
from annotation.services.routing import routing_config_update
from annotation.services.training import (
    evaluation_set_get_or_create,
    labelled_cells,
    retrain_after_labels_is_due,
    retrain_if_due,
    retrain_is_due,
    training_job_cancel,
    training_job_create,
    training_job_start_from_task,
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


def test_retraining_starts_after_every_n_labels_when_an_admin_asks(
    hematologist, django_capture_on_commit_callbacks
) -> None:
    """The label-count rule, through the label service as the queue's submit uses it."""
    case = Case.objects.create(accession_id="N")
    cells = [
        CellImage.objects.create(
            case=case, image=f"n/{i}.jpg", sha256=f"{i + 9000:064x}", width=1, height=1
        )
        for i in range(7)
    ]

    def label(cell: CellImage, source: str = "hematologist") -> None:
        with django_capture_on_commit_callbacks(execute=True):
            cell_label_create(
                cell_id=cell.pk,
                code="NE",
                annotator=None if source == "imported" else hematologist,
                source=source,
            )

    label(cells[0])  # off by default: nothing opens, however many labels
    assert not TrainingJob.objects.exists()
    assert retrain_after_labels_is_due() == (False, "retraining after N labels is off")
    routing_config_update(user=None, retrain_every_labels=3)
    label(cells[1])  # 2 of 3 (the label given while it was off counts: no job since)
    label(cells[2], source="imported")  # imported labels do not count
    assert not TrainingJob.objects.exists()
    label(cells[3])
    job = TrainingJob.objects.get()
    assert job.trigger == "labels" and job.status == "queued" and job.created_by is None
    # while that job is open, more labels open nothing (and the person labelling sees no error)
    for cell in cells[4:7]:
        label(cell)
    assert TrainingJob.objects.count() == 1
    # counted from the job's opening: the three labels since then make the next one due
    TrainingJob.objects.filter(pk=job.pk).update(status="failed", lock=None)
    due, why = retrain_after_labels_is_due()
    assert due and "3 new hematologist labels" in why


def test_imported_labels_do_not_trigger_the_schedule() -> None:
    routing_config_update(user=None, retrain_min_new_labels=1)
    case = Case.objects.create(accession_id="I")
    cell = CellImage.objects.create(case=case, image="c/x.jpg", sha256="f" * 64, width=1, height=1)
    Label.objects.create(cell=cell, code="LY", source="imported")
    assert retrain_is_due()[0] is False


def _labelled(case: Case, codes: dict[str, int]) -> None:
    """Cells of one case whose current label is set, ``codes`` giving cells per class."""
    for code, n in codes.items():
        for _ in range(n):
            i = CellImage.objects.count()
            cell = CellImage.objects.create(
                case=case, image=f"c/{i}.jpg", sha256=f"{i:064x}", width=1, height=1
            )
            label = Label.objects.create(cell=cell, code=code, source="imported")
            CellImage.objects.filter(pk=cell.pk).update(current_label=label)


def test_the_evaluation_set_holds_out_whole_cases_stratified_and_stays_fixed() -> None:
    for i in range(10):
        _labelled(Case.objects.create(accession_id=f"E{i}"), {"NE": 6, "LY": 3, "MO": 1})
    cells = labelled_cells()
    evaluation = evaluation_set_get_or_create(cells)
    held = set(evaluation.cell_ids)
    case_of = {cell_id: case_id for cell_id, _, _, case_id in cells}
    held_cases = {case_of[c] for c in held}
    train_cases = {case_of[c] for c in case_of if c not in held}
    assert held_cases and train_cases and not held_cases & train_cases  # no case on both sides
    assert 0.2 <= len(held) / len(cells) <= 0.4
    assert set(evaluation.counts) == {"NE", "LY", "MO"}  # every class on the held-out side
    assert sum(evaluation.counts.values()) == len(held)
    # Made once: new cells later do not move it.
    _labelled(Case.objects.create(accession_id="late"), {"NE": 5})
    again = evaluation_set_get_or_create(labelled_cells())
    assert again.pk == evaluation.pk and set(again.cell_ids) == held
    assert EvaluationSet.objects.count() == 1


def test_with_few_cases_the_evaluation_set_holds_out_cells_within_each_class() -> None:
    _labelled(Case.objects.create(accession_id="only"), {"NE": 10, "LY": 4, "EO": 2})
    cells = labelled_cells()
    evaluation = evaluation_set_get_or_create(cells)
    assert evaluation.counts == {"NE": 3, "LY": 1, "EO": 1}
    assert 0 < len(evaluation.cell_ids) < len(cells)  # both sides have cells to use


def test_a_redelivered_running_job_is_failed_as_worker_lost_not_run_twice() -> None:
    job = training_job_create(trigger="admin", user=None)
    TrainingJob.objects.filter(pk=job.pk).update(
        status="running", celery_task_id="task-1", heartbeat_at=timezone.now()
    )
    result = training_job_start_from_task(job_id=job.pk, task_id="task-1", redelivered=True)
    assert result == {"status": "failed", "reason": "worker lost"}
    job.refresh_from_db()
    assert job.status == "failed" and "worker running this job was lost" in job.error
    assert job.lock is None


def test_a_task_runs_a_queued_job_even_when_redelivered_and_ignores_a_missing_one() -> None:
    assert training_job_start_from_task(job_id=999_999, task_id="t", redelivered=False) == {
        "status": "missing"
    }
    job = training_job_create(trigger="admin", user=None)
    # Redelivered before it started: nothing was lost, so it runs (and fails: no cells).
    result = training_job_start_from_task(job_id=job.pk, task_id="t", redelivered=True)
    job.refresh_from_db()
    assert result == {"status": "failed", "version": None}
    assert job.status == "failed" and "no labelled cells" in job.error
    # A finished job delivered again is left as it is.
    again = training_job_start_from_task(job_id=job.pk, task_id="t", redelivered=False)
    assert again == {"status": "failed", "version": None}
