"""A hematologist reviews a case in Chromium: the gallery grouped by class, reclassifying
one cell, several cells (mouse) and a cell chosen by keyboard, the differential following,
and sign-off once nothing is left unreviewed (the sign-off rules and the report in detail:
tests/e2e/test_signoff.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from annotation.models import ReviewRules
from tests.e2e.conftest import PASSWORD, api_json, screenshot, sign_in
from tests.e2e.seed import labelled_case, users


def count(page: Any, code: str) -> Any:
    return page.get_by_test_id(f"count-{code}")


@pytest.mark.django_db(transaction=True)
def test_case_is_reviewed_reclassified_and_signed_off(
    live_server_url: str, new_page: Any, tmp_path: Path, shared_data: Path
) -> None:
    users()
    # The lab counts every cell here (the default target, 100 cells, is more than 10).
    ReviewRules.objects.update_or_create(pk=1, defaults={"count_target": 0})
    case = labelled_case(tmp_path, shared_data, {"NE": 4, "LY": 3, "MO": 2})
    page = new_page()
    sign_in(page, "hema")
    page.goto("/#/cases")
    table = page.get_by_test_id("case-table")
    table.get_by_role("link", name="REVIEW-1").wait_for()
    page.get_by_test_id("filter-status").select_option("new")
    page.get_by_role("button", name="Filter").click()
    table.get_by_role("link", name="REVIEW-1").wait_for()
    screenshot(page, "case-list")
    table.get_by_role("link", name="REVIEW-1").click()

    gallery = page.get_by_test_id("gallery")
    gallery.locator(".thumb").first.wait_for()
    assert gallery.locator(".thumb").count() == 10
    assert count(page, "NE").inner_text() == "4"
    signoff = page.get_by_test_id("signoff")
    page.get_by_test_id("signoff-unmet").wait_for()
    assert signoff.is_disabled()
    assert "disagree" in page.get_by_test_id("signoff-unmet").inner_text()
    screenshot(page, "case-review")

    # The conflicting cell (not classified yet): one click selects it, a key decides it.
    gallery.locator("[data-group=none] .thumb").first.click()
    page.keyboard.press("e")
    count(page, "EO").filter(has_text="1").wait_for()
    page.locator("[data-testid=signoff]:enabled").wait_for()

    # Two neutrophils selected with the mouse become monocytes.
    ne = gallery.locator("[data-group=NE] .thumb")
    reclassified = [
        ne.nth(0).get_attribute("data-cell-id"),
        ne.nth(1).get_attribute("data-cell-id"),
    ]
    ne.nth(0).click()
    ne.nth(1).click(modifiers=["Control"])
    assert gallery.locator(".thumb.selected").count() == 2
    page.get_by_test_id("palette").locator("button[data-code=MO]").click()
    count(page, "MO").filter(has_text="4").wait_for()
    assert count(page, "NE").inner_text() == "2"

    # By keyboard alone: focus a lymphocyte, Space selects it, B makes it a basophil.
    gallery.locator("[data-group=LY] .thumb").first.focus()
    page.keyboard.press("Space")
    page.keyboard.press("b")
    count(page, "BA").filter(has_text="1").wait_for()
    assert count(page, "LY").inner_text() == "2"
    assert page.get_by_test_id("total-normal").inner_text() == "10"

    signoff.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_test_id("signoff-password").fill(PASSWORD)  # signing asks for it again
    dialog.get_by_role("button", name="Sign", exact=True).click()
    page.get_by_test_id("case-status").filter(has_text="Signed").wait_for()
    screenshot(page, "case-signed-off")

    status, detail = api_json(page, "GET", f"/api/cases/{case.pk}/")
    assert status == 200 and detail["status"] == "signed_off"
    counts = {c["code"]: c["count"] for c in detail["differential"]["classes"] if c["count"]}
    assert counts == {"NE": 2, "LY": 2, "MO": 4, "EO": 1, "BA": 1}
    status, history = api_json(page, "GET", f"/api/cells/{reclassified[0]}/labels/")
    assert [(h["code"], h["source"]) for h in history] == [
        ("NE", "imported"),
        ("MO", "hematologist"),
    ]
    assert page.console_errors == []
