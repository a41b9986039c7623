"""The trust screens in Chromium: the admin console's agreement panel shows the kappas
that the seeded reads imply; a senior hematologist settles disagreements on the
adjudication screen (keyboard and mouse) and the adjudicated labels are stored; a plain
hematologist cannot reach that screen; an admin marks a gold cell and retires it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from annotation.models import Case, CellImage, GoldCell, Label, ReviewItem
from tests.e2e.conftest import api_json, screenshot, sign_in
from tests.e2e.seed import double_read_case, senior, users

# Two readers, six cells; they disagree on cells 4 (NE/MO) and 6 (LY/NE).
READS = {
    "ann": ["LY", "LY", "NE", "NE", "MO", "LY"],
    "ben": ["LY", "LY", "NE", "MO", "MO", "NE"],
}
# Worked by hand from READS (not by the code under test):
# Cohen: observed 4/6; chance (3*2 + 2*2 + 1*2) / 36 = 1/3; kappa = (2/3 - 1/3) / (2/3) = 0.50.
# Fleiss: P = 4/6; pooled LY 5/12, NE 4/12, MO 3/12, Pe = 50/144; kappa = 0.489 -> 0.49.
# Per class (Fleiss 1971): LY 1 - 1/(12*35/144) = 0.657, NE 1 - 2/(12*32/144) = 0.25,
# MO 1 - 1/(12*27/144) = 0.556.
COHEN, FLEISS = "0.50", "0.49"
PER_CLASS = {"LY": ("0.66", "substantial"), "NE": ("0.25", "fair"), "MO": ("0.56", "moderate")}
# Cells in which at least one reader chose the class: LY 0, 1, 5; NE 2, 3, 5; MO 3, 4.
CLASS_ITEMS = {"LY": "3", "NE": "3", "MO": "2"}


def _disagreements() -> list[ReviewItem]:
    return list(ReviewItem.objects.filter(status="adjudication").order_by("id"))


@pytest.fixture
def double_read(transactional_db: None, tmp_path: Path, shared_data: Path) -> Case:
    """The users of seed.users() plus a senior hematologist, and case DOUBLE-1 read by
    ann and ben as READS says."""
    users()
    senior()
    return double_read_case(tmp_path, shared_data, READS)


def _signed_in(new_page: Any, username: str) -> Any:
    page = new_page()
    sign_in(page, username)
    return page


@pytest.mark.django_db(transaction=True)
def test_admin_sees_the_kappas_the_reads_imply(
    double_read: Case, live_server_url: str, new_page: Any
) -> None:
    page = _signed_in(new_page, "boss")
    page.goto("/#/admin/models")
    page.get_by_role("navigation", name="Admin sections").get_by_role(
        "link", name="Agreement and gold"
    ).click()
    panel = page.get_by_test_id("agreement")
    panel.get_by_test_id("kappa-pairs").wait_for()

    fleiss = panel.get_by_test_id("fleiss").inner_text()
    assert FLEISS in fleiss and "moderate" in fleiss and "n = 6" in fleiss, fleiss
    pair = panel.locator("[data-pair='ann|ben']").inner_text()
    assert COHEN in pair and "n = 6" in pair, pair
    assert panel.locator("[data-pair='ben|ann']").inner_text() == pair  # symmetric
    for code, (kappa, band) in PER_CLASS.items():
        row_locator = panel.get_by_test_id("kappa-classes").locator(f"tr[data-code='{code}']")
        row = row_locator.inner_text()
        assert kappa in row and band in row, (code, row)
        assert row_locator.locator("td").first.inner_text().strip() == CLASS_ITEMS[code], row
    # Only the classes somebody chose have a kappa.
    assert panel.get_by_test_id("kappa-classes").locator("tbody tr").count() == 3
    weeks = panel.get_by_test_id("kappa-weeks").inner_text()
    assert FLEISS in weeks and "n = 6" in weeks, weeks
    assert not page.console_errors, page.console_errors
    screenshot(page, "trust-agreement")


@pytest.mark.django_db(transaction=True)
def test_senior_hematologist_adjudicates_disagreements_in_the_browser(
    double_read: Case, live_server_url: str, new_page: Any
) -> None:
    first, second = _disagreements()
    cells = list(CellImage.objects.filter(case=double_read).order_by("id"))
    assert [first.cell_id, second.cell_id] == [cells[3].pk, cells[5].pk]
    page = _signed_in(new_page, "senior")
    page.get_by_role("navigation", name="Screens").get_by_role("link", name="Adjudicate").click()
    viewer = page.get_by_test_id("adjudication-viewer")
    page.wait_for_function(
        "id => document.querySelector('[data-testid=adjudication-viewer]')?.dataset.cellId === id",
        arg=str(first.cell_id),
    )
    assert page.get_by_test_id("adjudication-left").inner_text() == "2"
    reads = page.get_by_test_id("reads")
    assert reads.locator("tr[data-author='ann']").get_attribute("data-code") == "NE"
    assert reads.locator("tr[data-author='ben']").get_attribute("data-code") == "MO"
    tally = page.get_by_test_id("tally").inner_text()
    assert "NE" in tally and "(ann)" in tally and "MO" in tally and "(ben)" in tally, tally
    page.get_by_test_id("cell-image").evaluate("img => img.decode()")
    screenshot(page, "trust-adjudicate")

    # Keyboard: M is Monocyte in the taxonomy; the next disagreement appears.
    viewer.focus()
    page.keyboard.press("m")
    page.wait_for_function(
        "id => document.querySelector('[data-testid=adjudication-viewer]')?.dataset.cellId === id",
        arg=str(second.cell_id),
    )
    decided = Label.objects.get(cell_id=first.cell_id, source="adjudicated")
    assert decided.code == "MO" and decided.annotator.username == "senior"
    first.refresh_from_db()
    assert first.status == "done" and first.label_id == decided.pk
    assert CellImage.objects.get(pk=first.cell_id).current_label_id == decided.pk

    # Mouse: the palette button for Neutrophil.
    page.get_by_test_id("palette").locator("button[data-code='NE']").click()
    page.get_by_test_id("adjudication-empty").wait_for()
    assert "Nothing to adjudicate" in page.get_by_test_id("adjudication-empty").inner_text()
    decided = Label.objects.get(cell_id=second.cell_id, source="adjudicated")
    assert decided.code == "NE" and decided.annotator.username == "senior"
    assert not _disagreements()
    assert page.get_by_test_id("adjudication-decided").inner_text() == "2"
    assert not page.console_errors, page.console_errors


@pytest.mark.django_db(transaction=True)
def test_hematologist_cannot_reach_the_adjudication_screen(
    double_read: Case, live_server_url: str, new_page: Any
) -> None:
    page = _signed_in(new_page, "hema")
    nav = page.get_by_role("navigation", name="Screens")
    nav.get_by_role("link", name="Label cells").wait_for()
    assert nav.get_by_role("link", name="Adjudicate").count() == 0
    page.goto("/#/adjudicate")
    page.get_by_test_id("refused").wait_for()
    assert page.get_by_test_id("adjudication-viewer").count() == 0
    # The API refuses regardless of the UI, and nothing was decided.
    item = _disagreements()[0]
    status, body = api_json(page, "POST", f"/api/adjudication/{item.pk}/decide/", {"code": "NE"})
    assert status == 403 and body["error"]["code"] == "permission_denied"
    assert len(_disagreements()) == 2
    assert not Label.objects.filter(source="adjudicated").exists()


@pytest.mark.django_db(transaction=True)
def test_admin_marks_gold_cells_sees_them_with_the_models_accuracy_and_retires_one(
    double_read: Case, live_server_url: str, new_page: Any
) -> None:
    case = double_read
    cells = list(CellImage.objects.filter(case=case).order_by("id"))
    agreed, disputed = cells[0], cells[3]  # LY by both readers; NE/MO, no label yet
    page = _signed_in(new_page, "boss")

    # From the case review: the selected cell, its current class as the default.
    page.goto(f"/#/cases/{case.pk}")
    page.get_by_test_id("gallery").locator(f"button[data-cell-id='{agreed.pk}']").click()
    form = page.get_by_test_id("gold-mark-cell")
    assert form.get_by_test_id("gold-code").input_value() == "LY"
    form.get_by_test_id("gold-note").fill("textbook lymphocyte")
    form.get_by_role("button", name="Mark as gold").click()
    page.get_by_text(f"Cell {agreed.pk} is now a gold cell (LY)").wait_for()
    gold = GoldCell.objects.get(cell=agreed)
    assert (gold.diff14, gold.note, gold.marked_by.username) == (
        "LY",
        "textbook lymphocyte",
        "boss",
    )

    # From the console, by cell id; then both are listed and the model is measured.
    page.goto("/#/admin/trust")
    panel = page.get_by_test_id("gold")
    panel.get_by_test_id("gold-cell").fill(str(disputed.pk))
    panel.get_by_test_id("gold-code").select_option("NE")
    panel.get_by_role("button", name="Mark as gold").click()
    listing = panel.get_by_test_id("gold-list")
    listing.locator(f"li[data-cell-id='{disputed.pk}']").wait_for()
    assert "textbook lymphocyte" in listing.locator(f"li[data-cell-id='{agreed.pk}']").inner_text()
    assert "label none ≠ gold" in listing.locator(f"li[data-cell-id='{disputed.pk}']").inner_text()
    assert "2 gold cells" in panel.get_by_test_id("gold-summary").inner_text()
    # seed-v1 predicts LY for every cell: right on the LY gold cell, wrong on the NE one.
    model = panel.get_by_test_id("gold-models").locator("tr[data-row='seed-v1']")
    cells_text = [t.strip() for t in model.locator("td").all_inner_texts()]
    assert cells_text[:2] == ["2", "50.0 % ▼"], cells_text
    assert "100.0 %" in model.inner_text() and "0.0 % ▼" in model.inner_text()
    page.get_by_test_id("agreement").get_by_test_id("kappa-pairs").wait_for()
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=gold-list] img')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    dismiss = page.get_by_role("button", name="Dismiss this message")
    while dismiss.count():
        dismiss.first.click()
    screenshot(page, "trust-console")  # docs/trust-console.png is a copy of this one

    # Retire: gone from the list, kept in the database for the record.
    listing.get_by_role("button", name=f"Retire gold cell {agreed.pk}").click()
    page.get_by_role("dialog").get_by_role("button", name="Retire").click()
    listing.locator(f"li[data-cell-id='{agreed.pk}']").wait_for(state="detached")
    gold.refresh_from_db()
    assert gold.retired_at is not None
    assert not page.console_errors, page.console_errors
