"""Sign-off and the report in Chromium: a case that cannot be signed says why (count
target, unidentified cells, disagreements) before the button; "review this case's open
cells" opens the labelling screen on that case only; the admin sets the review rules;
signing asks for the password again; two-person sign-off; reopening with a reason and the
amended version; the report opens as HTML and downloads as a PDF."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from annotation.models import Case, CellImage, ModelVersion, ReviewItem
from annotation.services.imports import cells_import
from annotation.services.routing import routing_config_update
from annotation.services.users import user_create_with_role
from mlworker.taxonomy import CODES
from tests.annotation.helpers import copy_files, first_images
from tests.e2e.conftest import PASSWORD, api_json, screenshot, sign_in, wait_until
from tests.e2e.seed import labelled_case, predict_ly_and_route, users


def clean_case(
    tmp_path: Path,
    shared_data: Path,
    name: str,
    per_class: dict[str, int],
    *,
    labelled: bool = True,
) -> Case:
    """A case of real PBC cells, nothing open: with imported labels (one class folder
    each), or unlabelled (every file at the top of the folder)."""
    root = tmp_path / name
    for code, n in per_class.items():
        copy_files(first_images(shared_data / "pbc" / code, n), root / code if labelled else root)
    cells_import(source=root, case_name=name, enqueue_processing=False)
    return Case.objects.get(accession_id=name)


def open_case(page: Any, case: Case) -> None:
    page.goto(f"/#/cases/{case.pk}")
    page.get_by_test_id("gallery").locator(".thumb").first.wait_for()
    page.get_by_test_id("signoff-panel").wait_for()


def set_rules(page: Any, **rules: Any) -> None:
    status, body = api_json(page, "PUT", "/api/review-rules/", rules)
    assert status == 200, body


def sign_with(page: Any, password: str, button: str = "Sign") -> None:
    page.get_by_test_id("signoff").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_test_id("signoff-password").fill(password)
    dialog.get_by_role("button", name=button, exact=True).click()


def unmet(page: Any) -> list[str]:
    items = page.get_by_test_id("signoff-unmet").locator("li")
    return [items.nth(i).get_attribute("data-code") for i in range(items.count())]


def expected_errors(page: Any, *allowed: str) -> list[str]:
    """Console errors other than the failed responses this test provokes on purpose."""
    return [e for e in page.console_errors if not any(a in e for a in allowed)]


@pytest.mark.django_db(transaction=True)
def test_a_case_that_cannot_be_signed_says_why_then_is_signed_and_reported(
    live_server_url: str, new_page: Any, tmp_path: Path, shared_data: Path
) -> None:
    users()
    # Another case first, so its queued cell would be the queue's next without the filter.
    other = clean_case(tmp_path, shared_data, "OTHER-1", {"PR": 1}, labelled=False)
    case = labelled_case(tmp_path, shared_data, {"NE": 4, "LY": 3, "MO": 2})
    routing_config_update(user=None, audit_rate=0.0, confidence_threshold=0.99)
    version = ModelVersion.objects.create(
        name="seed-v1", arch="resnet18", class_codes=list(CODES), status="active",
        per_class_tpr=dict.fromkeys(CODES, 0.95),
    )  # fmt: skip
    twin = CellImage.objects.get(case=case, current_label__isnull=True)
    predict_ly_and_route([*CellImage.objects.filter(case=other), twin], version)

    admin = new_page()
    sign_in(admin, "boss")
    page = new_page()
    sign_in(page, "hema")
    open_case(page, case)
    # Before the button: every reason, and the button disabled.
    page.get_by_test_id("signoff-unmet").wait_for()
    assert unmet(page) == ["count_target_not_reached", "unidentified_cells", "open_disagreements"]
    why = page.get_by_test_id("signoff-unmet").inner_text()
    assert "9 of 100 white cells reviewed" in why and "1 cell is unidentified" in why
    assert page.get_by_test_id("signoff").is_disabled()
    provenance = page.get_by_test_id("provenance").inner_text()
    assert "9 WBC reviewed (0 cells in the portal, 9 imported from class_folders)" in provenance
    assert "1 by the model only" in provenance
    assert page.get_by_test_id("model-LY").inner_text() == "1"
    assert page.get_by_test_id("count-LY").inner_text() == "3"  # the model's LY is not counted
    screenshot(page, "signoff-refused")

    # "Review this case's open cells": the labelling screen on this case only.
    page.get_by_test_id("review-open-cells").click()
    page.get_by_test_id("label-case-only").wait_for()
    page.wait_for_selector(f"[data-cell-id='{twin.pk}'], img[src*='/cells/{twin.pk}/']")
    screenshot(page, "signoff-review-open-cells")
    page.keyboard.press("e")  # the twin is an eosinophil
    page.get_by_test_id("labelled-count").filter(has_text="1").wait_for()
    wait_until(
        lambda: CellImage.objects.filter(pk=twin.pk, current_label__code="EO").exists(),
        15, "the twin labelled EO from the labelling screen",
    )  # fmt: skip
    # The other case's cell is untouched: still queued, never leased.
    assert list(ReviewItem.objects.filter(cell__case=other).values_list("status", flat=True)) == [
        "queued"
    ]

    # The admin sets the count target to "every cell" and a coded comment list.
    admin.goto("/#/admin/review")
    form = admin.get_by_test_id("review-rules")
    form.wait_for()
    form.get_by_test_id("rules-target").select_option("0")
    form.get_by_test_id("rules-coded").fill("BM: Suggest bone marrow examination.")
    form.get_by_role("button", name="Save review rules").click()
    admin.get_by_test_id("info").filter(has_text="Review rules saved").wait_for()
    screenshot(admin, "signoff-review-rules")
    status, rules = api_json(admin, "GET", "/api/review-rules/")
    assert (
        status == 200 and rules["count_target"] == 0 and rules["coded_comments"][0]["code"] == "BM"
    )

    open_case(page, case)
    page.get_by_test_id("signoff-why").wait_for()
    assert page.get_by_test_id("signoff").is_enabled()
    assert page.get_by_test_id("case-status").inner_text() == "In review"
    comment = page.get_by_test_id("interpretation")
    comment.locator("input[data-code=BM]").check()
    comment.get_by_test_id("comment-text").fill("Eosinophilia.")
    comment.get_by_test_id("comment-save").click()
    page.get_by_test_id("info").filter(has_text="Comment saved").wait_for()

    sign_with(page, "not-the-password")
    page.get_by_test_id("error").filter(has_text="password is not right").wait_for()
    assert page.get_by_test_id("case-status").inner_text() == "In review"
    sign_with(page, PASSWORD)
    page.get_by_test_id("case-status").filter(has_text="Signed").wait_for()
    signers = page.get_by_test_id("signers-1")
    signers.wait_for()
    assert signers.inner_text().startswith("hema (")
    assert page.get_by_test_id("error").count() == 0  # the wrong password's error is gone
    screenshot(page, "signoff-signed")

    # The report: the HTML opens in a new tab, the PDF downloads.
    with page.context.expect_page() as opened:
        page.get_by_test_id("report-html-1").click()
    report = opened.value
    report.get_by_test_id("report").wait_for()
    assert report.get_by_test_id("report-accession").inner_text() == "REVIEW-1"
    assert "Final" in report.get_by_test_id("report-status").inner_text()
    text = report.inner_text("body")
    assert "Suggest bone marrow examination." in text and "Eosinophilia." in text
    assert "hema (hema)" in report.get_by_test_id("report-signers").inner_text()
    screenshot(report, "signoff-report-html")
    with page.expect_download() as download:
        page.get_by_test_id("report-pdf-1").click()
    pdf = Path(download.value.path()).read_bytes()
    assert pdf.startswith(b"%PDF")
    assert download.value.suggested_filename == "report-REVIEW-1-v1.pdf"
    # The wrong password's 403, as the response, the browser and the UI's log report it.
    assert expected_errors(page, "403 POST", "status of 403", "password is not right") == []


@pytest.mark.django_db(transaction=True)
def test_two_person_signoff_needs_another_user(
    live_server_url: str, new_page: Any, tmp_path: Path, shared_data: Path
) -> None:
    users()
    user_create_with_role(username="hema2", password=PASSWORD, role="hematologist")
    case = clean_case(tmp_path, shared_data, "TWO-1", {"NE": 3, "LY": 2})
    first = new_page()
    sign_in(first, "hema")
    boss = new_page()
    sign_in(boss, "boss")
    set_rules(boss, count_target=0, two_person_signoff=True)

    open_case(first, case)
    assert (
        "two signatures by different people" in first.get_by_test_id("signoff-panel").inner_text()
    )
    sign_with(first, PASSWORD)
    status = first.get_by_test_id("case-status")
    status.filter(has_text="Awaiting second signature").wait_for()
    first.get_by_test_id("signoff-unmet").locator(
        "li[data-code=second_signer_must_differ]"
    ).wait_for()
    assert first.get_by_test_id("signoff").inner_text() == "Give the second signature"
    assert first.get_by_test_id("signoff").is_disabled()
    assert "awaiting the second signature" in first.get_by_test_id("reports").inner_text()
    screenshot(first, "signoff-awaiting-second")

    second = new_page()
    sign_in(second, "hema2")
    open_case(second, case)
    assert second.get_by_test_id("signoff").is_enabled()
    sign_with(second, PASSWORD, button="Sign (second)")
    second.get_by_test_id("case-status").filter(has_text="Signed").wait_for()
    signers = second.get_by_test_id("signers-1").inner_text()
    assert signers.startswith("hema (") and " and hema2 (" in signers
    screenshot(second, "signoff-two-signatures")
    code, report = api_json(second, "GET", f"/api/cases/{case.pk}/reports/1/")
    assert code == 200 and report["is_final"] is True
    assert [s["username"] for s in report["content"]["signers"]] == ["hema", "hema2"]
    assert first.console_errors == [] and second.console_errors == []


@pytest.mark.django_db(transaction=True)
def test_reopen_with_a_reason_and_amend_keeps_the_previous_report(
    live_server_url: str, new_page: Any, tmp_path: Path, shared_data: Path
) -> None:
    users()
    case = clean_case(tmp_path, shared_data, "AMEND-1", {"NE": 3, "LY": 2})
    boss = new_page()
    sign_in(boss, "boss")
    set_rules(boss, count_target=0, two_person_signoff=False)
    page = new_page()
    sign_in(page, "hema")
    open_case(page, case)
    sign_with(page, PASSWORD)
    page.get_by_test_id("case-status").filter(has_text="Signed").wait_for()
    palette = page.get_by_test_id("palette")
    assert palette.locator("button[data-code=MO]").is_disabled()  # frozen while signed

    page.get_by_test_id("reopen").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_test_id("reopen-reason").fill("One neutrophil is a monocyte.")
    dialog.get_by_role("button", name="Reopen").click()
    page.get_by_test_id("case-status").filter(has_text="Reopened for amendment").wait_for()
    reason = page.get_by_test_id("reopen-reason-shown")
    reason.filter(has_text="One neutrophil is a monocyte.").wait_for()

    gallery = page.get_by_test_id("gallery")
    gallery.locator("[data-group=NE] .thumb").first.click()
    palette.locator("button[data-code=MO]").click()
    page.get_by_test_id("count-MO").filter(has_text="1").wait_for()
    sign_with(page, PASSWORD)
    page.get_by_test_id("case-status").filter(has_text="Amended").wait_for()
    reports = page.get_by_test_id("reports")
    reports.locator("li[data-version='2']").filter(has_text="amends v1").wait_for()
    assert "superseded" in reports.locator("li[data-version='1']").inner_text()
    screenshot(page, "signoff-amended")

    # The first version stays readable, and says what superseded it.
    v1 = page.context.request.get(f"/api/cases/{case.pk}/reports/1/html/")
    assert v1.status == 200 and "superseded by version 2" in v1.text()
    code, v2 = api_json(page, "GET", f"/api/cases/{case.pk}/reports/2/")
    assert (
        code == 200
        and v2["amends_version"] == 1
        and v2["amend_reason"] == "One neutrophil is a monocyte."
    )
    assert (v2["content"]["counts"]["NE"], v2["content"]["counts"]["MO"]) == (2, 1)
    code, v1_json = api_json(page, "GET", f"/api/cases/{case.pk}/reports/1/")
    assert code == 200
    assert (v1_json["content"]["counts"]["NE"], v1_json["content"]["counts"]["MO"]) == (3, 0)
    assert page.console_errors == []
