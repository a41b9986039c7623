"""The product scores with the worker's engine (WBC_SCORING_ENGINE): through the scoring
task, in a real worker process and in-process, with the ONNX files made on first use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from annotation.models import CellImage, Prediction
from annotation.services import pipeline
from annotation.services.imports import cells_import
from annotation.services.model_registry import model_version_checkpoint
from annotation.tasks import pipeline as tasks
from mlworker.device import choose_runtime
from mlworker.score import Scorer
from tests.annotation.pipeline.fixtures import active_version, unlabelled_folder
from tests.conftest import start_worker, wait_for_worker
from tests.processes import stop_process

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def torch_probabilities(version, cells: list[CellImage]) -> np.ndarray:
    """The torch reference on the same stored files."""
    scorer = Scorer(model_version_checkpoint(version), runtime=choose_runtime("cpu", "fp32"))
    scores = scorer.score([Path(c.image.path) for c in cells])
    return np.stack([s.probabilities for s in scores])


def stored_probabilities(version, cells: list[CellImage]) -> np.ndarray:
    by_cell = {p.cell_id: p.probabilities for p in Prediction.objects.filter(model_version=version)}
    return np.array([by_cell[c.pk] for c in cells], dtype=np.float64)


@pytest.fixture
def fresh_scorers():
    pipeline._scorers.clear()
    yield
    pipeline._scorers.clear()


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_scores_with_onnx_when_the_setting_says_so(
    redis_url: str, tmp_path: Path, shared_data: Path, settings
) -> None:
    from wbcportal.celery import app

    app.conf.task_always_eager = False
    app.conf.broker_url = redis_url
    app.conf.result_backend = redis_url
    cache = tmp_path / "onnx-cache"
    log = tmp_path / "worker.log"
    proc = start_worker(
        redis_url,
        media_root=Path(str(settings.MEDIA_ROOT)),
        log=log,
        extra_env={"WBC_SCORING_ENGINE": "onnx", "WBC_ONNX_CACHE_DIR": str(cache)},
    )
    try:
        wait_for_worker(app, proc, log)
        version = active_version(tmp_path)
        summary = cells_import(
            source=unlabelled_folder(shared_data, tmp_path / "smear", per_class=1),
            enqueue_processing=False,
        )
        ids = summary.cell_ids
        # the one result read back (tasks ignore their results by default)
        sent = tasks.score_cells.apply_async(args=[ids, version.pk], ignore_result=False)
        result = sent.get(timeout=300)
    finally:
        stop_process(proc)
    worker_log = log.read_text()
    assert result["engine"] == "onnx", worker_log[-3000:]
    assert result["scored"] == len(ids) == 6
    assert "scoring engine: onnx" in worker_log
    assert len(list(cache.glob("resnet18-*.fp32.onnx"))) == 1  # exported by the worker
    cells = list(CellImage.objects.filter(pk__in=ids).order_by("id"))
    stored = stored_probabilities(version, cells)
    reference = torch_probabilities(version, cells)
    assert np.abs(stored - reference).max() <= 1e-3


@pytest.mark.django_db
def test_in_process_scoring_follows_the_engine_setting(
    tmp_path: Path, shared_data: Path, settings, fresh_scorers
) -> None:
    settings.WBC_ONNX_CACHE_DIR = str(tmp_path / "onnx-cache")
    version = active_version(tmp_path)
    summary = cells_import(
        source=unlabelled_folder(shared_data, tmp_path / "smear", per_class=1),
        enqueue_processing=False,
    )
    ids = summary.cell_ids
    assert tasks.score_cells.apply(args=[ids[:2], version.pk]).get()["engine"] == "torch"

    settings.WBC_SCORING_ENGINE = "onnx-int8"
    pipeline._scorers.clear()  # a worker started with the other setting
    result = tasks.score_cells.apply(args=[ids[2:], version.pk]).get()
    assert result["engine"] == "onnx-int8" and result["scored"] == len(ids) - 2
    # calibrated on the database's cells, the oldest first
    (_int8,) = Path(settings.WBC_ONNX_CACHE_DIR).glob("resnet18-*.int8-*.onnx")
    cells = list(CellImage.objects.filter(pk__in=ids[2:]).order_by("id"))
    stored = stored_probabilities(version, cells)
    assert np.allclose(stored.sum(axis=1), 1.0, atol=1e-4)
    assert Prediction.objects.filter(model_version=version).count() == len(ids)


@pytest.mark.django_db
def test_an_export_that_cannot_be_written_scores_with_torch(
    tmp_path: Path, shared_data: Path, settings, fresh_scorers
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    settings.WBC_SCORING_ENGINE = "onnx"
    settings.WBC_ONNX_CACHE_DIR = str(blocker / "onnx")
    version = active_version(tmp_path)
    summary = cells_import(
        source=unlabelled_folder(shared_data, tmp_path / "smear", per_class=1),
        enqueue_processing=False,
    )
    result = tasks.score_cells.apply(args=[summary.cell_ids, version.pk]).get()
    assert result["engine"] == "torch" and result["scored"] == len(summary.cell_ids)
