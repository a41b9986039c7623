"""The signed report: its frozen content (reviewed cells only, model-only apart, flags on
reviewed cells, comments and cell notes, signers, the model), editable comments until
signed, and the report as JSON, HTML and PDF."""

# The API tests' fixtures are imported below and used as test arguments (F811).
# ruff: noqa: F811
from __future__ import annotations

from typing import Any

import pytest
from PIL import ImageFile

from annotation.models import Case, CaseReport, ReviewItem, ReviewRules
from tests.annotation.api.conftest import (  # noqa: F401 - fixtures
    PASSWORD,
    active_model,
    admin_api,
    clients,
    ds_api,
    heme_api,
    make_cell,
    predict,
    queue,
    users,
)

pytestmark = pytest.mark.django_db

CODED = [
    {"code": "BM", "text": "Suggest bone marrow examination."},
    {"code": "REP", "text": "Repeat the count on a fresh sample."},
]


@pytest.fixture
def blast_case(make_cell, active_model, users) -> dict[str, Any]:
    """Case BLAST-1: reviewed NE NE NE BL MY NR (portal) and LY (imported, analyser), and two
    cells the model alone classified (PR at 0.95 and NE at 0.9). 6 reviewed WBC."""
    ReviewRules.objects.update_or_create(
        pk=1, defaults={"count_target": 0, "coded_comments": CODED}
    )
    case = Case.objects.create(
        accession_id="BLAST-1", patient_pseudonym="P-77", diagnosis="AML", source="cellavision"
    )
    heme = users["hematologist"]
    cells = [make_cell(case, label=c, annotator=heme) for c in ("NE", "NE", "NE", "BL", "MY", "NR")]
    cells.append(make_cell(case, label="LY"))
    for cell, code in zip(cells, ("NE", "NE", "NE", "BL", "MY", "NR", "LY"), strict=True):
        predict(cell, active_model, code, 0.9)
    model_only = [make_cell(case), make_cell(case)]
    predict(model_only[0], active_model, "PR", 0.95)
    predict(model_only[1], active_model, "NE", 0.9)
    ReviewItem.objects.create(cell=cells[3], status="done", flagged=True)
    return {"case": case, "cells": cells, "model_only": model_only}


def sign(client: Any, case: Case) -> Any:
    return client.post(f"/api/cases/{case.pk}/sign-off/", {"password": PASSWORD}, format="json")


def park_model_only(blast_case: dict[str, Any]) -> None:
    """Move the model-only cells to another case, so that every cell of BLAST-1 is reviewed
    (the target is "every cell" here)."""
    parking = Case.objects.create(accession_id=f"PARK-{blast_case['case'].pk}")
    for cell in blast_case["model_only"]:
        cell.case = parking
        cell.save(update_fields=["case"])


def test_comments_and_cell_notes_are_editable_until_signed(heme_api, blast_case, make_cell) -> None:
    case = blast_case["case"]
    blast = blast_case["cells"][3]
    url = f"/api/cases/{case.pk}/interpretation/"
    unknown = heme_api.put(url, {"text": "x", "coded": ["NOPE"]}, format="json")
    assert unknown.status_code == 400 and "coded" in unknown.json()["error"]["fields"]
    saved = heme_api.put(url, {"text": "Blasts seen.", "coded": ["BM"]}, format="json")
    assert saved.status_code == 200, saved.content
    assert heme_api.get(url).json()["coded"] == ["BM"]

    notes_url = f"/api/cases/{case.pk}/cell-notes/"
    listed = heme_api.get(notes_url).json()
    assert [(n["cell_id"], n["flagged"], n["note"]) for n in listed] == [(blast.pk, True, "")]
    noted = heme_api.put(f"{notes_url}{blast.pk}/", {"note": "Auer rod."}, format="json")
    assert noted.status_code == 200 and noted.json()[0]["note"] == "Auer rod."
    foreign = make_cell(Case.objects.create(accession_id="OTHER-1"))
    assert heme_api.put(f"{notes_url}{foreign.pk}/", {"note": "x"}).status_code == 404

    # Target "every cell": the model-only cells are not reviewed yet.
    assert sign(heme_api, case).status_code == 409
    for cell, code in zip(blast_case["model_only"], ("PR", "NE"), strict=True):
        assert heme_api.post(f"/api/cells/{cell.pk}/labels/", {"code": code}).status_code == 201
    assert sign(heme_api, case).status_code == 200
    late = heme_api.put(url, {"text": "changed", "coded": []}, format="json")
    assert late.status_code == 409 and late.json()["error"]["code"] == "case_signed"
    assert heme_api.put(f"{notes_url}{blast.pk}/", {"note": ""}).status_code == 409


def test_report_content_counts_reviewed_cells_and_keeps_model_only_apart(
    heme_api, blast_case, make_cell
) -> None:
    case = blast_case["case"]
    heme_api.put(
        f"/api/cases/{case.pk}/interpretation/",
        {"text": "Blasts seen.", "coded": ["BM", "REP"]},
        format="json",
    )
    blast = blast_case["cells"][3]
    heme_api.put(f"/api/cases/{case.pk}/cell-notes/{blast.pk}/", {"note": "Auer rod."})
    ReviewRules.objects.filter(pk=1).update(count_target=100)
    refused = sign(heme_api, case)
    assert "count_target_not_reached" in refused.json()["error"]["fields"]
    # 94 more imported lymphocytes reach the 100-cell target; the two model-only cells
    # (confident, not queued) stay model-only and do not count.
    for _ in range(94):
        make_cell(case, label="LY")
    signed = sign(heme_api, case)
    assert signed.status_code == 200, signed.content

    content = heme_api.get(f"/api/cases/{case.pk}/reports/1/").json()["content"]
    assert content["case"] == {
        "id": case.pk,
        "accession_id": "BLAST-1",
        "patient_pseudonym": "P-77",
        "source": "cellavision",
        "diagnosis": "AML",
    }
    assert content["version"] == 1 and content["total_wbc"] == 100
    counted = {k: v for k, v in content["counts"].items() if v}
    assert counted == {"NE": 3, "LY": 95, "BL": 1, "MY": 1}
    assert content["percentages"]["NE"] == 3.0 and content["percentages"]["MO"] == 0.0
    assert {k: v for k, v in content["model_only"].items() if v} == {"PR": 1, "NE": 1}
    assert "NR" not in content["counts"] and content["non_wbc"] == {"AR": 0, "NR": 1}
    assert content["nrbc_per_100_wbc"] == pytest.approx(1.0)
    assert {f["code"] for f in content["flags"]} == {"blasts_present", "left_shift"}
    assert all(f["label"] for f in content["flags"])
    assert content["comments"] == {"text": "Blasts seen.", "coded": CODED}
    assert content["flagged_cell_notes"] == [{"cell_id": blast.pk, "note": "Auer rod."}]
    assert [s["username"] for s in content["signers"]] == ["u_hematologist"]
    assert content["signers"][0]["signed_at"]
    assert content["model_version"] == "v-active"
    assert (content["amends_version"], content["amend_reason"]) == (None, "")
    assert content["provenance"]["imported"] == 95
    assert content["provenance"]["reviewed_in_portal"] == 6


def test_model_only_cells_are_in_the_report_apart_and_flags_ignore_them(
    heme_api, blast_case
) -> None:
    from annotation.selectors.cases import case_differential

    case = blast_case["case"]
    d = case_differential(case=case, user=None)
    assert d["wbc_counted"] == 6 and d["model_only"] == 2
    by_code = {row["code"]: row for row in d["classes"]}
    assert (by_code["PR"]["count"], by_code["PR"]["model_only"]) == (0, 1)
    # PR is only the model's guess: no left shift from it, but MY (reviewed) flags it.
    left = next(f for f in d["flags"] if f["code"] == "left_shift")
    assert "MY 1" in left["message"] and "PR" not in left["message"]


def test_report_html_and_pdf(heme_api, ds_api, blast_case) -> None:
    case = blast_case["case"]
    park_model_only(blast_case)
    heme_api.put(
        f"/api/cases/{case.pk}/interpretation/", {"text": "Blasts <b>seen</b>."}, format="json"
    )
    assert sign(heme_api, case).status_code == 200
    listed = ds_api.get(f"/api/cases/{case.pk}/reports/").json()
    assert len(listed) == 1 and listed[0]["html_url"].endswith("/reports/1/html/")

    html = ds_api.get(listed[0]["html_url"])
    assert html.status_code == 200 and html["Content-Type"].startswith("text/html")
    text = html.content.decode()
    assert "BLAST-1" in text and "u_hematologist" in text and "Final" in text
    assert "Blasts &lt;b&gt;seen&lt;/b&gt;." in text  # comments are escaped
    assert "/static/annotation/report.css" in text and "<style>" not in text  # CSP

    pdf = ds_api.get(listed[0]["pdf_url"])
    assert pdf.status_code == 200 and pdf["Content-Type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF")
    assert 'filename="report-BLAST-1-v1.pdf"' in pdf["Content-Disposition"]
    # WeasyPrint's import switches Pillow to accepting truncated images process-wide; a
    # worker that made a PDF must still refuse a truncated cell upload
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert ds_api.get(f"/api/cases/{case.pk}/reports/2/pdf/").status_code == 404


def test_report_is_final_only_with_every_signature(heme_api, blast_case) -> None:
    case = blast_case["case"]
    ReviewRules.objects.filter(pk=1).update(two_person_signoff=True)
    park_model_only(blast_case)
    assert sign(heme_api, case).status_code == 200
    report = CaseReport.objects.get(case=case)
    assert report.is_final is False
    html = heme_api.get(f"/api/cases/{case.pk}/reports/1/html/").content.decode()
    assert "Not final: awaiting the second signature" in html
