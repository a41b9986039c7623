"""The export panel in Chromium (issue 18, item 5): a data scientist chooses a format and
filters, starts the job, follows its progress bar to the end and downloads the zip, whose
content is what the filters chose; a failed job says why; past jobs stay listed; a
hematologist sees no panel and the API refuses them."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path
from typing import Any

import pytest

from annotation.models import Case, CellImage, ExportJob
from annotation.services.imports import cells_import
from annotation.services.users import user_create_with_role
from tests.annotation.helpers import copy_files, first_images
from tests.e2e.conftest import PASSWORD, api_json, screenshot, sign_in
from tests.e2e.seed import users

pytestmark = pytest.mark.django_db(transaction=True)

JOB_DONE = (
    "[data-testid=export-job][data-status=succeeded], [data-testid=export-job][data-status=failed]"
)


def labelled_cases(tmp_path: Path, shared_data: Path) -> tuple[Case, Case]:
    """EXP-1: 60 NE, 50 LY, 10 MO cells; EXP-2: 20 NE cells; labelled by their folders."""
    for name, per_class in (("EXP-1", {"NE": 60, "LY": 50, "MO": 10}), ("EXP-2", {"NE": 20})):
        root = tmp_path / name
        for code, n in per_class.items():
            skip = 60 if name == "EXP-2" else 0  # other images than EXP-1's (no duplicates)
            copy_files(first_images(shared_data / "pbc" / code, n + skip)[skip:], root / code)
        cells_import(source=root, case_name=name, enqueue_processing=False)
    return Case.objects.get(accession_id="EXP-1"), Case.objects.get(accession_id="EXP-2")


def data_scientist() -> None:
    user_create_with_role(username="ds", password=PASSWORD, role="data_scientist")


def newest_job(page: Any) -> Any:
    return page.get_by_test_id("export-job").first


def download_zip(page: Any, row: Any, tmp_path: Path, name: str) -> zipfile.ZipFile:
    with page.expect_download() as info:
        row.get_by_test_id("export-download").click()
    path = tmp_path / name
    info.value.save_as(str(path))
    return zipfile.ZipFile(path)


def test_data_scientist_exports_with_filters_follows_the_progress_and_downloads(
    celery_worker: Any, live_server_url: str, new_page: Any, tmp_path: Path, shared_data: Path
) -> None:
    data_scientist()
    exp1, _ = labelled_cases(tmp_path, shared_data)
    page = new_page()
    sign_in(page, "ds")
    page.get_by_role("navigation", name="Screens").get_by_role("link", name="Export").click()
    panel = page.get_by_test_id("export-panel")
    panel.wait_for()
    # Every format the API has, and its filters.
    for fmt in ("imagefolder", "csv", "coco"):
        assert panel.get_by_test_id(f"format-{fmt}").is_visible()
    page.get_by_test_id("export-case").locator("option", has_text="EXP-1").wait_for(
        state="attached"
    )

    # CSV of the NE cells of EXP-1.
    page.get_by_test_id("format-csv").check()
    page.get_by_test_id("export-class").select_option("NE")
    page.get_by_test_id("export-case").select_option(label="EXP-1")
    page.get_by_test_id("export-label-status").select_option("labelled")
    page.get_by_test_id("export-start").click()
    row = newest_job(page)
    row.wait_for()
    page.get_by_test_id("messages").get_by_text("started: 60 cells as CSV").wait_for()
    assert "class NE" in row.inner_text() and "case EXP-1" in row.inner_text()
    page.wait_for_selector(JOB_DONE, timeout=60_000)
    assert row.get_attribute("data-status") == "succeeded", row.inner_text()
    assert row.get_by_test_id("progress").get_attribute("value") == "100"
    assert "60 cells" in row.get_by_test_id("export-job-progress").inner_text()
    page.get_by_test_id("messages").get_by_text("is ready").wait_for()
    screenshot(page, "export-panel-done")
    with download_zip(page, row, tmp_path, "ne.zip") as zf:
        rows = list(csv.DictReader(io.StringIO(zf.read("cells.csv").decode("utf-8"))))
    expected = CellImage.objects.filter(case=exp1, current_label__code="NE")
    assert len(rows) == expected.count() == 60
    assert {r["diff14"] for r in rows} == {"NE"}
    assert {int(r["cell_id"]) for r in rows} == set(expected.values_list("id", flat=True))

    # An image-folder export of every labelled cell: 140 cells, the bar runs to the end.
    page.get_by_test_id("format-imagefolder").check()
    page.get_by_test_id("export-class").select_option("")
    page.get_by_test_id("export-case").select_option("")
    page.get_by_test_id("export-start").click()
    page.locator("[data-testid=export-job]").nth(1).wait_for()
    row = newest_job(page)
    assert row.get_attribute("data-job-id") != page.locator("[data-testid=export-job]").nth(
        1
    ).get_attribute("data-job-id")
    page.wait_for_selector(
        "[data-testid=export-job]:first-child[data-status=succeeded],"
        " [data-testid=export-job]:first-child[data-status=failed]",
        timeout=120_000,
    )
    assert row.get_attribute("data-status") == "succeeded", row.inner_text()
    with download_zip(page, row, tmp_path, "all.zip") as zf:
        manifest = list(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode("utf-8"))))
    assert len(manifest) == CellImage.objects.filter(current_label__isnull=False).count() == 140

    # Past jobs stay listed, newest first, as the API lists them.
    page.reload()
    page.get_by_test_id("export-job").nth(1).wait_for()
    status, listing = api_json(page, "GET", "/api/export-jobs/")
    assert status == 200
    shown = [int(r.get_attribute("data-job-id")) for r in page.get_by_test_id("export-job").all()]
    assert shown == [j["id"] for j in listing["results"]] and len(shown) == 2
    screenshot(page, "export-panel-history")
    assert page.console_errors == []


def test_a_failed_export_says_why_and_offers_no_download(
    celery_worker: Any, live_server_url: str, new_page: Any, tmp_path: Path, shared_data: Path
) -> None:
    data_scientist()
    labelled_cases(tmp_path, shared_data)
    # The storage lost one image: the image-folder export cannot be written.
    lost = CellImage.objects.order_by("id").first()
    assert lost is not None
    Path(lost.image.path).unlink()
    page = new_page()
    sign_in(page, "ds")
    page.goto("/#/exports")
    page.get_by_test_id("format-imagefolder").check()
    page.get_by_test_id("export-start").click()
    row = newest_job(page)
    row.wait_for()
    page.wait_for_selector(JOB_DONE, timeout=60_000)
    assert row.get_attribute("data-status") == "failed"
    error = row.get_by_test_id("export-job-error")
    assert "could not be written" in error.inner_text()
    assert row.get_by_test_id("export-download").count() == 0
    assert row.get_by_test_id("progress").count() == 0
    banner = page.get_by_test_id("messages").get_by_test_id("error")
    banner.filter(has_text=f"building export job {row.get_attribute('data-job-id')}").wait_for()
    screenshot(page, "export-panel-failed")
    job = ExportJob.objects.get()
    assert job.status == "failed" and job.error in error.inner_text()


def test_hematologist_sees_no_export_panel_and_the_api_refuses(
    live_server_url: str, new_page: Any
) -> None:
    users()
    page = new_page()
    sign_in(page, "hema")
    nav = page.get_by_role("navigation", name="Screens")
    nav.get_by_role("link", name="Label cells").wait_for()
    assert nav.get_by_role("link", name="Export").count() == 0
    page.goto("/#/exports")
    page.get_by_test_id("refused").wait_for()
    assert page.get_by_test_id("export-panel").count() == 0
    screenshot(page, "export-panel-refused")
    status, body = api_json(page, "GET", "/api/exports/?format=csv&mode=job")
    assert status == 403 and body["error"]["code"] == "permission_denied"
    assert not ExportJob.objects.exists()
