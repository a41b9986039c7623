"""The pipeline end to end with real worker processes over Redis and PostgreSQL."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from annotation.models import CellImage, Prediction, ReviewItem, Segmentation
from annotation.rules import route_reasons, weak_classes
from annotation.selectors.routing import routing_config_get
from annotation.services.imports import cells_import
from annotation.services.routing import routing_config_update
from annotation.tasks import pipeline as tasks
from tests.annotation.pipeline.fixtures import active_version, unlabelled_folder
from tests.conftest import start_worker, wait_for_worker


def wait_until(condition, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tail}")


@pytest.mark.django_db(transaction=True)
def test_import_is_segmented_scored_and_routed_by_a_real_worker(
    celery_worker, tmp_path: Path, shared_data: Path
) -> None:
    version = active_version(tmp_path)
    routing_config_update(user=None, audit_rate=0.0, confidence_threshold=0.8)
    summary = cells_import(source=unlabelled_folder(shared_data, tmp_path / "smear"))
    n = summary.new_cells
    assert n == 12
    wait_until(
        lambda: Prediction.objects.count() == n and Segmentation.objects.count() == n,
        120, "segmentations and predictions", tmp_path / "worker.log",
    )  # fmt: skip
    assert set(CellImage.objects.values_list("processing", flat=True)) == {"scored"}
    for seg in Segmentation.objects.all():
        assert seg.status == "ok", seg.failure_reason
        assert seg.mask.name.endswith(".png") and 0 < seg.nucleus_area < seg.wbc_area
    config, weak = routing_config_get(), weak_classes(version, routing_config_get().weak_class_tpr)
    wait_until(lambda: ReviewItem.objects.count() >= 1, 30, "routing")
    for prediction in Prediction.objects.select_related("cell"):
        assert len(prediction.probabilities) == 14 and len(bytes(prediction.features)) == 512 * 2
        expected = route_reasons(
            prediction=prediction, config=config, weak=weak, has_conflict=False
        )
        items = list(ReviewItem.objects.filter(cell=prediction.cell))
        assert [i.reasons for i in items] == ([expected] if expected else [])


@pytest.mark.django_db
def test_a_redelivered_task_creates_no_duplicates(tmp_path: Path, shared_data: Path) -> None:
    active_version(tmp_path)
    summary = cells_import(
        source=unlabelled_folder(shared_data, tmp_path / "s", per_class=1), enqueue_processing=False
    )
    ids = summary.cell_ids
    for _ in range(2):
        tasks.segment_cells.apply(args=[ids]).get()
        result = tasks.score_cells.apply(args=[ids]).get()
    assert result["already"] == len(ids) and result["scored"] == 0
    assert Segmentation.objects.count() == Prediction.objects.count() == len(ids)


@pytest.mark.django_db
def test_an_unreadable_image_fails_its_cell_and_the_batch_goes_on(
    tmp_path: Path, shared_data: Path
) -> None:
    active_version(tmp_path)
    summary = cells_import(
        source=unlabelled_folder(shared_data, tmp_path / "s", per_class=1), enqueue_processing=False
    )
    broken = CellImage.objects.get(pk=summary.cell_ids[0])
    Path(broken.image.path).write_bytes(b"garbage")
    tasks.segment_cells.apply(args=[summary.cell_ids]).get()
    result = tasks.score_cells.apply(args=[summary.cell_ids]).get()
    broken.refresh_from_db()
    assert broken.processing == "failed" and "cannot be read" in broken.processing_error
    assert result["scored"] == len(summary.cell_ids) - 1
    assert not Prediction.objects.filter(cell=broken).exists()


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_batch_loses_nothing(
    redis_url: str, tmp_path: Path, shared_data: Path, settings
) -> None:
    from wbcportal.celery import app

    active_version(tmp_path)
    summary = cells_import(
        source=unlabelled_folder(shared_data, tmp_path / "s", per_class=6), enqueue_processing=False
    )
    ids = summary.cell_ids
    log = tmp_path / "workers.log"
    # This test is about the redelivery itself (acks_late: the broker hands the dead
    # worker's task on), so it shortens the visibility timeout; with the shipped timeouts
    # housekeeping re-queues the cells first (tests/faults/test_worker_killed.py).
    env = {"WBC_VISIBILITY_TIMEOUT": "3"}
    media = Path(settings.MEDIA_ROOT)
    first = start_worker(redis_url, media_root=media, log=log, extra_env=env)
    try:
        wait_for_worker(app, first, log)
        tasks.segment_cells.apply_async(args=[ids])
        wait_until(lambda: Segmentation.objects.exists(), 60, "the first segmentation", log)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    done_before = Segmentation.objects.count()
    assert done_before < len(ids), "the batch finished before the kill; nothing was tested"
    # The broker hands the dead worker's task on once it has been unacknowledged for the
    # visibility timeout; a worker that starts sooner finds nothing to restore yet (and the
    # next periodic restore may be minutes away), which made this test depend on timing.
    time.sleep(float(env["WBC_VISIBILITY_TIMEOUT"]) + 1.5)
    second = start_worker(redis_url, media_root=media, log=log, extra_env=env)
    try:
        wait_until(
            lambda: Segmentation.objects.count() == len(ids), 90, "the rest of the batch", log
        )
    finally:
        second.terminate()
        second.wait(timeout=20)
    assert Segmentation.objects.values("cell_id").distinct().count() == len(ids)
