"""The admin console in Chromium: retraining with live progress, model versions side by
side with promote, queue composition and routing, upload; and a hematologist kept out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from annotation.models import ModelVersion, RoutingConfig, TrainingJob
from annotation.services.model_registry import model_version_register
from mlworker.metrics import classification_metrics
from mlworker.taxonomy import CODES
from tests.annotation.helpers import first_images
from tests.annotation.pipeline.fixtures import active_version, tiny_checkpoint
from tests.e2e.conftest import api_json, screenshot, sign_in
from tests.e2e.seed import labelled_training_set, users


@pytest.mark.django_db(transaction=True)
def test_hematologist_cannot_reach_the_admin_console(live_server_url: str, new_page: Any) -> None:
    users()
    page = new_page()
    sign_in(page, "hema")
    nav = page.get_by_role("navigation", name="Screens")
    assert nav.get_by_role("link", name="Label cells").is_visible()
    assert nav.get_by_role("link", name="Admin console").count() == 0
    page.goto("/#/admin/training")
    page.get_by_test_id("refused").wait_for()
    assert page.get_by_test_id("trigger-training").count() == 0
    screenshot(page, "admin-refused")
    # The API refuses regardless of the UI.
    status, body = api_json(page, "POST", "/api/training-jobs/", {"params": {}})
    assert status == 403 and body["error"]["code"] == "permission_denied"
    assert not TrainingJob.objects.exists()


def _candidate(tmp_path: Path) -> ModelVersion:
    """A candidate whose metrics carry a confusion matrix (one weak class)."""
    rng = np.random.default_rng(0)
    cm = np.diag(rng.integers(8, 12, len(CODES))) + rng.integers(0, 2, (len(CODES), len(CODES)))
    cm[CODES.index("BL"), CODES.index("LY")] += 6
    return model_version_register(
        checkpoint_path=tiny_checkpoint(tmp_path / "cand.pt", seed=1),
        metrics=classification_metrics(cm),
    )


@pytest.mark.django_db(transaction=True)
def test_admin_compares_and_promotes_versions_edits_routing_and_uploads(
    celery_worker: Any, live_server_url: str, new_page: Any, tmp_path: Path, shared_data: Path
) -> None:
    users()
    active = active_version(tmp_path, balanced=0.3, tpr=dict.fromkeys(CODES, 0.3))
    candidate = _candidate(tmp_path)
    page = new_page()
    sign_in(page, "boss")

    page.goto("/#/admin/models")
    page.get_by_test_id("tpr-compare").wait_for()
    page.get_by_test_id("confusion").first.wait_for()
    assert "passes" in page.get_by_test_id("guard").inner_text()
    screenshot(page, "admin-models")
    row = page.get_by_test_id("versions").locator(f"tr[data-version='{candidate.name}']")
    row.get_by_role("button", name="Promote…").click()
    page.get_by_role("dialog").get_by_role("button", name=f"Promote {candidate.name}").click()
    row.get_by_text("active").wait_for()
    assert ModelVersion.objects.get(pk=active.pk).status == "retired"
    page.get_by_test_id("versions").locator(f"tr[data-version='{active.name}']").get_by_role(
        "button", name="Roll back to this…"
    ).wait_for()

    page.goto("/#/admin/queue")
    page.get_by_test_id("by-reason").wait_for()
    field = page.get_by_test_id("routing-confidence_threshold")
    field.fill("0.7")
    page.get_by_role("button", name="Save thresholds").click()
    page.get_by_text("Routing settings saved").wait_for()
    assert RoutingConfig.objects.get().confidence_threshold == pytest.approx(0.7)
    field.fill("7")  # out of range: the API's message is shown, not swallowed
    page.get_by_role("button", name="Save thresholds").click()
    page.get_by_test_id("error").first.wait_for()
    screenshot(page, "admin-queue")

    page.goto("/#/admin/import")
    bogus = tmp_path / "notes.jpg"
    bogus.write_text("not an image")
    images = first_images(shared_data / "pbc" / "NE", 2)
    page.get_by_test_id("upload-files").set_input_files([*map(str, images), str(bogus)])
    page.get_by_test_id("upload-submit").click()
    summary = page.get_by_test_id("upload-summary")
    summary.wait_for(timeout=60_000)
    assert "2 new cells" in summary.inner_text()
    skipped = page.get_by_test_id("skipped")
    assert "notes.jpg" in skipped.inner_text()
    screenshot(page, "admin-import")
    # The one deliberate failure (the out-of-range threshold) may be logged, nothing else.
    errors = [e for e in page.console_errors if "routing" not in e and "400 (Bad Request)" not in e]
    assert errors == []


@pytest.mark.django_db(transaction=True)
def test_admin_triggers_retraining_and_sees_progress_reach_the_end(
    celery_worker: Any, live_server_url: str, new_page: Any, tmp_path: Path, shared_data: Path
) -> None:
    users()
    active_version(tmp_path)
    labelled_training_set(tmp_path, shared_data, per_class=4)
    page = new_page()
    sign_in(page, "boss")
    page.goto("/#/admin/training")
    page.get_by_test_id("trigger-training").click()
    page.get_by_role("dialog").get_by_role("button", name="Start retraining").click()
    job = page.get_by_test_id("job")
    job.wait_for()
    page.wait_for_selector("[data-testid=job][data-status=running]", timeout=120_000)
    screenshot(page, "admin-training-running")
    page.wait_for_selector(
        "[data-testid=job][data-status=succeeded], [data-testid=job][data-status=failed]",
        timeout=300_000,
    )
    screenshot(page, "admin-training-done")
    assert job.get_attribute("data-status") == "succeeded", page.get_by_test_id("job").inner_text()
    assert page.get_by_test_id("progress").get_attribute("value") == "100"
    assert page.get_by_test_id("job-log").inner_text() != "No log lines yet."
    result = TrainingJob.objects.get().result_version
    assert result is not None and result.name in page.get_by_test_id("job-result").inner_text()
