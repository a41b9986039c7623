"""Screen defects found in Chromium (issue 18, item 6), each checked in Chromium:

- the focus goes to the cell whenever the labelling screen opens (its header link clicked,
  also while already on it) and after each label, so Enter accepts without a click;
- one message area: a later success of the same action clears its error, success
  messages do not pile up and expire;
- the "★ suggested" tag lies inside its palette button at 1440x900, for every class;
- an admin does not land on the labelling screen and leases nothing until opening it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from annotation.models import Case, CellImage, Label, ModelVersion, Prediction, ReviewItem
from annotation.services.imports import cells_import
from annotation.services.routing import cells_route, routing_config_update
from mlworker.taxonomy import CODES
from tests.annotation.helpers import copy_files, first_images
from tests.e2e.conftest import screenshot, sign_in, wait_until
from tests.e2e.seed import users

pytestmark = pytest.mark.django_db(transaction=True)


def queued_cells(tmp_path: Path, shared_data: Path, suggestions: list[str]) -> Case:
    """Case FOCUS-1: one real unlabelled cell per entry of ``suggestions``, each predicted
    (at 0.7, below the 0.99 threshold, so queued) as that class. Predictions are set, not
    computed: no worker needed."""
    folder = tmp_path / "focus"
    per_class = -(-len(suggestions) // 3)
    images = [
        img
        for code in ("LY", "NE", "MO")
        for img in first_images(shared_data / "pbc" / code, per_class)
    ]
    copy_files(images[: len(suggestions)], folder)
    cells_import(source=folder, case_name="FOCUS-1", enqueue_processing=False)
    case = Case.objects.get(accession_id="FOCUS-1")
    routing_config_update(user=None, audit_rate=0.0, confidence_threshold=0.99)
    version = ModelVersion.objects.create(
        name="seed-v1", arch="resnet18", class_codes=list(CODES), status="active",
        per_class_tpr=dict.fromkeys(CODES, 0.95),
    )  # fmt: skip
    cells = list(CellImage.objects.filter(case=case).order_by("id"))
    assert len(cells) == len(suggestions)
    for cell, code in zip(cells, suggestions, strict=True):
        probs = [0.3 / 13] * len(CODES)
        probs[CODES.index(code)] = 0.7
        Prediction.objects.create(
            cell=cell, model_version=version, probabilities=probs, top_code=code,
            confidence=0.7, margin=0.6, entropy=1.0,
        )  # fmt: skip
    cells_route(cell_ids=[c.pk for c in cells], version=version)
    assert ReviewItem.objects.filter(status="queued").count() == len(suggestions)
    return case


def shown_cell(page: Any) -> str:
    return page.get_by_test_id("viewer").get_attribute("data-cell-id") or ""


def wait_for_a_cell(page: Any, other_than: str = "") -> str:
    page.wait_for_function(
        "before => { const v = document.querySelector('[data-testid=viewer]');"
        " return v && v.dataset.cellId && v.dataset.cellId !== before }",
        arg=other_than,
    )
    return shown_cell(page)


def focus_is_on_the_cell(page: Any) -> bool:
    return bool(page.evaluate("document.activeElement?.dataset?.testid === 'viewer'"))


def test_enter_accepts_right_after_opening_the_labelling_screen_from_the_header(
    live_server_url: str, new_page: Any, tmp_path: Path, shared_data: Path
) -> None:
    users()
    queued_cells(tmp_path, shared_data, ["LY"] * 8)
    page = new_page()
    sign_in(page, "hema")  # a hematologist lands on the labelling screen
    first = wait_for_a_cell(page)
    nav = page.get_by_role("navigation", name="Screens")

    # The header link clicked while already on the screen: it would keep the focus.
    nav.get_by_role("link", name="Label cells").click()
    page.wait_for_function("document.activeElement?.dataset?.testid === 'viewer'")
    page.keyboard.press("Enter")
    second = wait_for_a_cell(page, other_than=first)
    wait_until(lambda: Label.objects.filter(source="hematologist").count() == 1, 15, "the label")
    assert Label.objects.get(source="hematologist").code == "LY"

    # From another screen, by the header link: Enter at once, no click on the image.
    nav.get_by_role("link", name="Cases").click()
    page.get_by_test_id("case-table").wait_for()
    nav.get_by_role("link", name="Label cells").click()
    current = wait_for_a_cell(page)
    page.wait_for_function("document.activeElement?.dataset?.testid === 'viewer'")
    page.keyboard.press("Enter")
    third = wait_for_a_cell(page, other_than=current)
    wait_until(lambda: Label.objects.filter(source="hematologist").count() == 2, 15, "the label")

    # A palette button pressed from the keyboard (Space): the focus comes back to the
    # cell, so the next Enter accepts the next cell instead of pressing that button again.
    page.get_by_test_id("palette").locator("button[data-code=NE]").focus()
    page.keyboard.press("Space")
    fourth = wait_for_a_cell(page, other_than=third)
    assert focus_is_on_the_cell(page)
    page.keyboard.press("Enter")
    wait_for_a_cell(page, other_than=fourth)
    wait_until(lambda: Label.objects.filter(source="hematologist").count() == 4, 15, "the labels")
    codes = list(
        Label.objects.filter(source="hematologist").order_by("id").values_list("code", flat=True)
    )
    assert codes == ["LY", "LY", "NE", "LY"]
    assert second and first != second
    screenshot(page, "defects-focus-after-header-link")
    assert page.console_errors == []


def test_a_later_success_clears_the_error_of_the_same_action_and_successes_expire(
    live_server_url: str, new_page: Any
) -> None:
    users()
    page = new_page()
    sign_in(page, "boss")
    page.goto("/#/admin/queue")
    field = page.get_by_test_id("routing-confidence_threshold")
    save = page.get_by_role("button", name="Save thresholds")
    errors = page.get_by_test_id("messages").get_by_test_id("error")
    infos = page.get_by_test_id("messages").get_by_test_id("info")

    # Out of range: the API's message is shown; the same mistake again does not pile up.
    field.fill("7")
    save.click()
    errors.first.wait_for()
    field.fill("8")
    save.click()
    page.wait_for_timeout(700)
    assert errors.count() == 1, errors.all_inner_texts()
    assert "saving the routing settings" in errors.first.inner_text()
    screenshot(page, "defects-messages-error")

    # The same action succeeds: its error goes, the success is said once.
    field.fill("0.7")
    save.click()
    infos.filter(has_text="Routing settings saved").wait_for()
    assert errors.count() == 0
    field.fill("0.8")
    save.click()
    page.wait_for_timeout(500)
    assert infos.count() == 1, infos.all_inner_texts()
    screenshot(page, "defects-messages-success")

    # And it goes away on its own (ui.tsx INFO_TTL_MS, 6 s).
    infos.first.wait_for(state="detached", timeout=10_000)
    assert page.get_by_test_id("messages").inner_text().strip() == ""
    unexpected = [e for e in page.console_errors if "routing" not in e and "400" not in e]
    assert unexpected == []


def test_the_suggested_tag_lies_inside_its_palette_button_at_1440_for_every_class(
    live_server_url: str, new_page: Any, tmp_path: Path, shared_data: Path
) -> None:
    users()
    queued_cells(tmp_path, shared_data, list(CODES))
    page = new_page()
    page.set_viewport_size({"width": 1440, "height": 900})
    sign_in(page, "hema")
    seen: dict[str, dict[str, float]] = {}
    cell = wait_for_a_cell(page)
    for i in range(len(CODES)):
        page.get_by_test_id("palette").locator("button.cls.suggested .sugg").wait_for()
        # Both boxes in one go, so that no re-render or scroll falls between them.
        found = page.evaluate(
            """() => {
                const button = document.querySelector('[data-testid=palette] button.cls.suggested');
                const tag = button.querySelector('.sugg');
                const r = (el) => { const b = el.getBoundingClientRect();
                    return {x: b.x, y: b.y, width: b.width, height: b.height}; };
                const clipped = button.scrollWidth > button.clientWidth + 1
                    || button.scrollHeight > button.clientHeight + 1
                    || [...button.children].some((c) => c.scrollWidth > c.clientWidth + 1);
                return {code: button.dataset.code, tag: r(tag), button: r(button), clipped};
            }"""
        )
        code, box, outer = found["code"], found["tag"], found["button"]
        inside = (
            box["x"] >= outer["x"] - 0.5
            and box["y"] >= outer["y"] - 0.5
            and box["x"] + box["width"] <= outer["x"] + outer["width"] + 0.5
            and box["y"] + box["height"] <= outer["y"] + outer["height"] + 0.5
        )
        assert inside, f"the tag of {code} sticks out of its button: {box} vs {outer}"
        # Nothing inside the button is cut off either (overflow hidden, an ellipsis).
        assert not found["clipped"], f"the button of {code} clips its text"
        seen[code] = box
        if i == 0:
            page.wait_for_function(
                "() => { const i = document.querySelector('[data-testid=cell-image]');"
                " return i && i.complete && i.naturalWidth > 0 }"
            )
            screenshot(page, "defects-palette-1440")
        if i < len(CODES) - 1:
            page.keyboard.press("Enter")
            cell = wait_for_a_cell(page, other_than=cell)
    assert sorted(seen) == sorted(CODES)
    assert page.console_errors == []


def test_an_admin_lands_on_the_cases_and_leases_nothing_until_opening_the_labelling_screen(
    live_server_url: str, new_page: Any, tmp_path: Path, shared_data: Path
) -> None:
    users()
    queued_cells(tmp_path, shared_data, ["LY"] * 6)
    page = new_page()
    sign_in(page, "boss")
    page.get_by_test_id("case-table").wait_for()
    assert page.get_by_test_id("viewer").count() == 0
    current = page.get_by_role("navigation", name="Screens").locator("[aria-current=page]")
    assert current.inner_text() == "Cases"
    page.wait_for_timeout(1500)  # time enough for a lease request to have been sent
    assert ReviewItem.objects.filter(status="leased").count() == 0
    screenshot(page, "defects-admin-landing")

    page.get_by_role("navigation", name="Screens").get_by_role("link", name="Label cells").click()
    wait_for_a_cell(page)
    wait_until(lambda: ReviewItem.objects.filter(status="leased").exists(), 15, "the admin's lease")
    assert page.console_errors == []
