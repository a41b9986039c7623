"""Retraining jobs that really train: mlworker.train.fit inside training_job_run.

A tiny active version (ResNet-18 at 32 px) and ~30 labelled PBC cells; one epoch per
stage. The last test runs the job in a real worker process and kills it with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import mlworker.train
import mlworker.train.cached
from annotation.models import EvaluationSet, ModelVersion, TrainingJob
from annotation.rules import MIN_CLASS_N_TO_JUDGE
from annotation.services.imports import cells_import
from annotation.services.training import training_job_cancel, training_job_create, training_job_run
from tests.annotation.helpers import copy_files, first_images
from tests.annotation.pipeline.fixtures import active_version
from tests.conftest import start_worker, wait_for_worker

CLASSES = ("NE", "LY", "MO", "EO", "BA", "ME", "MY", "PR")
TINY_ARGS = [
    "--epochs-finetune",
    "1",
    "--epochs-weak",
    "1",
    "--batch-size",
    "8",
    "--threads",
    "1",
    "--workers",
    "0",
]


def labelled_tree(shared_data: Path, dest: Path, per_class: int = 4) -> Path:
    """A class-per-folder tree of real PBC cells: imported with their labels."""
    for code in CLASSES:
        copy_files(first_images(shared_data / "pbc" / code, per_class), dest / code)
    return dest


def import_labelled(shared_data: Path, tmp_path: Path) -> int:
    summary = cells_import(
        source=labelled_tree(shared_data, tmp_path / "smear"), enqueue_processing=False
    )
    assert summary.new_cells == 4 * len(CLASSES)
    return summary.new_cells


def run_job(args: list[str]) -> TrainingJob:
    job = training_job_create(trigger="admin", user=None, params={"args": args})
    training_job_run(job_id=job.pk)  # with Redis the queued task has no worker: run it here
    job.refresh_from_db()
    return job


@pytest.mark.django_db(transaction=True)
def test_a_job_trains_a_candidate_judged_on_a_fixed_evaluation_set(
    tmp_path: Path, shared_data: Path
) -> None:
    active = active_version(tmp_path)
    n_cells = import_labelled(shared_data, tmp_path)

    job = run_job(TINY_ARGS)
    assert job.status == "succeeded", (job.error, job.log_tail)
    assert job.lock is None and job.progress["percent"] == 100
    assert "finetune 1/1" in job.log_tail and "calibrated" in job.log_tail
    version = job.result_version
    assert version is not None and version.status in ("candidate", "active")
    assert version.arch == "resnet18" and version.image_size == 32 and version.temperature > 0
    metrics = version.metrics
    evaluation = EvaluationSet.objects.get()
    assert metrics["n_images"] == len(evaluation.cell_ids) > 0
    assert set(version.per_class_tpr) == set(metrics["per_class"])
    assert version.per_class_tpr["NE"] is not None and version.per_class_tpr["BL"] is None
    assert metrics["weak_classes"]["before"] is not None and metrics["history"]
    active_report = metrics["active_on_evaluation_set"]
    assert active_report["n_images"] == metrics["n_images"]
    # Both versions scored on the same cells: the paired figures the guard tests.
    paired = metrics["paired_on_evaluation_set"]
    assert paired["active_version_id"] == active.pk and paired["n"] == metrics["n_images"]
    assert sum(row["n"] for row in paired["per_class"].values()) == paired["n"]
    for code, row in paired["per_class"].items():
        assert row["n"] == active_report["per_class"][code]["n"]
        assert row["active_hits"] == round(active_report["per_class"][code]["tpr"] * row["n"])
        assert row["candidate_hits"] == round(metrics["per_class"][code]["tpr"] * row["n"])
        assert row["active_only"] - row["candidate_only"] == (
            row["active_hits"] - row["candidate_hits"]
        )
    assert version.training_snapshot["evaluation_unjudged"] == {
        code: n for code, n in evaluation.counts.items() if n < MIN_CLASS_N_TO_JUDGE
    }
    snapshot = version.training_snapshot
    assert snapshot["n_train"] + snapshot["n_evaluation"] == n_cells
    active.refresh_from_db()
    assert active.status in ("active", "retired")

    # A second run is judged on the very same cells.
    held = list(evaluation.cell_ids)
    second = run_job(TINY_ARGS)
    assert second.status == "succeeded", second.error
    assert EvaluationSet.objects.count() == 1 and EvaluationSet.objects.get().cell_ids == held
    assert second.result_version is not None
    assert second.result_version.metrics["n_images"] == len(held)
    assert second.result_version.training_snapshot["n_evaluation"] == len(held)


@pytest.mark.django_db(transaction=True)
def test_a_job_cancelled_during_training_stops_without_a_version(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    active = active_version(tmp_path)
    import_labelled(shared_data, tmp_path)
    # the product's default retraining is the cached-trunk one (mlworker/train/cached.py)
    real_fit = mlworker.train.cached.fit_cached
    seen: list[dict[str, Any]] = []

    def fit_cancelled_by_a_user(*args: Any, progress: Any, **kwargs: Any) -> Any:
        def cancel_then_report(event: dict[str, Any]) -> None:
            seen.append(dict(event))
            if event["stage"] == "finetune" and event["epoch"] == 1:
                job = TrainingJob.objects.get(status="running")
                training_job_cancel(job_id=job.pk, user=None)
            progress(event)  # the job's own report notices and raises

        return real_fit(*args, progress=cancel_then_report, **kwargs)

    monkeypatch.setattr(mlworker.train.cached, "fit_cached", fit_cancelled_by_a_user)
    job = run_job(["--epochs-finetune", "3", *TINY_ARGS[2:]])
    assert job.status == "cancelled" and job.lock is None and job.result_version is None
    assert seen[-1]["stage"] == "finetune", "training went on after the cancel"
    assert ModelVersion.objects.count() == 1
    active.refresh_from_db()
    assert active.status == "active"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--arch", "resnet34"], "differs from the starting checkpoint"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--lr", "1e30", "--epochs-head", "1"], "training loss is"),
    ],
)
def test_a_failing_training_fails_the_job_and_releases_the_lock(
    tmp_path: Path, shared_data: Path, args: list[str], reason: str
) -> None:
    active = active_version(tmp_path)
    import_labelled(shared_data, tmp_path)
    job = run_job([*TINY_ARGS, *args])
    assert job.status == "failed" and reason in job.error, job.error
    assert job.lock is None and job.result_version is None
    assert ModelVersion.objects.count() == 1
    active.refresh_from_db()
    assert active.status == "active"
    # the lock is free: the next job can start
    assert training_job_create(trigger="admin", user=None).status == "queued"


def wait_until(condition: Any, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    tail = log.read_text()[-4000:] if log.exists() else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tail}")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_during_training_fails_the_job_and_a_retry_succeeds(
    redis_url: str, tmp_path: Path, shared_data: Path, settings: Any
) -> None:
    import redis

    from wbcportal.celery import app

    redis.Redis.from_url(redis_url).flushdb()  # no tasks left over from in-process tests
    active = active_version(tmp_path)
    import_labelled(shared_data, tmp_path)
    log = tmp_path / "workers.log"
    # About the redelivery itself: a redelivered task whose job is running fails it at
    # once. With the shipped timeouts the heartbeat watchdog fails it first (after
    # WBC_TRAINING_HEARTBEAT_TIMEOUT, 10 min: too slow here; test_training_jobs.py tests it).
    env = {"WBC_VISIBILITY_TIMEOUT": "3", "WBC_RETRAIN_ARGS": " ".join(TINY_ARGS[2:])}
    media = Path(settings.MEDIA_ROOT)
    first = start_worker(redis_url, media_root=media, log=log, extra_env=env)
    try:
        wait_for_worker(app, first, log)
        job = training_job_create(
            trigger="admin", user=None, params={"args": ["--epochs-finetune", "200"]}
        )

        def training() -> bool:
            job.refresh_from_db()
            return job.status == "running" and job.progress.get("stage") == "finetune"

        wait_until(training, 120, "the job to be training", log)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    job.refresh_from_db()
    assert job.status == "running"  # nobody has noticed yet
    second = start_worker(redis_url, media_root=media, log=log, extra_env=env)
    try:
        wait_until(
            lambda: TrainingJob.objects.get(pk=job.pk).status == "failed",
            90,
            "the redelivered task to fail the job",
            log,
        )
        job.refresh_from_db()
        assert "worker running this job was lost" in job.error and job.lock is None
        assert ModelVersion.objects.count() == 1
        active.refresh_from_db()
        assert active.status == "active"

        retry = training_job_create(trigger="admin", user=None, params={"args": TINY_ARGS[:2]})
        wait_until(
            lambda: TrainingJob.objects.get(pk=retry.pk).status in ("succeeded", "failed"),
            180,
            "the retry",
            log,
        )
        retry.refresh_from_db()
        assert retry.status == "succeeded", (retry.error, retry.log_tail)
        assert retry.result_version is not None and retry.result_version.metrics["per_class"]
    finally:
        second.terminate()
        second.wait(timeout=30)
