"""Cases: list with filters, create, the differential, sign-off."""

from __future__ import annotations

import pytest

from annotation.models import AuditEvent, Case, ReviewItem

pytestmark = pytest.mark.django_db


def test_case_list_filters_by_status_diagnosis_and_accession_search(admin_api, smear) -> None:
    Case.objects.create(accession_id="OTHER-2", diagnosis="CLL", status="signed_off")
    body = admin_api.get("/api/cases/").json()
    assert body["count"] == 2
    smear_row = next(r for r in body["results"] if r["accession_id"] == "SMEAR-1")
    assert (smear_row["n_cells"], smear_row["n_labelled"]) == (8, 5)
    assert [
        r["accession_id"] for r in admin_api.get("/api/cases/?search=mear").json()["results"]
    ] == ["SMEAR-1"]
    assert admin_api.get("/api/cases/?status=signed_off").json()["count"] == 1
    assert admin_api.get("/api/cases/?diagnosis=aml").json()["count"] == 1
    assert admin_api.get("/api/cases/?created_from=2000-01-01").json()["count"] == 2
    assert admin_api.get("/api/cases/?created_to=2000-01-01").json()["count"] == 0


def test_case_list_rejects_an_unknown_status_naming_the_allowed_ones(admin_api, db) -> None:
    response = admin_api.get("/api/cases/?status=done")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid" and "status" in error["fields"]
    assert "done" in error["fields"]["status"]


def test_admin_creates_a_case_and_a_duplicate_accession_is_409(admin_api, db) -> None:
    response = admin_api.post(
        "/api/cases/", {"accession_id": "NEW-1", "diagnosis": "CML"}, format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["status"] == "new"
    assert AuditEvent.objects.filter(
        action="case.create", target_id=str(response.json()["id"])
    ).exists()
    again = admin_api.post("/api/cases/", {"accession_id": "NEW-1"}, format="json")
    assert again.status_code == 409
    assert again.json()["error"]["fields"] == {"accession_id": "already in use"}
    missing = admin_api.post("/api/cases/", {}, format="json")
    assert missing.status_code == 400 and "accession_id" in missing.json()["error"]["fields"]


def test_differential_counts_labels_then_active_model_predictions(
    heme_api, smear, django_assert_max_num_queries
) -> None:
    case = smear["case"]
    with django_assert_max_num_queries(10):
        response = heme_api.get(f"/api/cases/{case.pk}/")
    assert response.status_code == 200
    diff = response.json()["differential"]
    by_code = {row["code"]: row for row in diff["classes"]}
    # Labels: NE NE LY BL NR; model only: MO, MY, LY (the queued one).
    assert by_code["NE"]["count"] == 2 and by_code["NE"]["source"] == "label"
    assert by_code["MO"]["count"] == 1 and by_code["MO"]["source"] == "model"
    assert by_code["LY"]["count"] == 2 and by_code["LY"]["source"] == "mixed"
    assert diff["wbc_counted"] == 7  # 8 cells minus the NRBC
    assert by_code["NE"]["percent"] == pytest.approx(28.6)
    assert by_code["NR"]["percent"] is None and by_code["NR"]["per_100_wbc"] == pytest.approx(14.3)
    assert diff["totals"]["normal"]["count"] == 5  # NE NE LY LY MO
    assert diff["totals"]["abnormal"]["count"] == 2  # BL MY
    assert diff["predicted_only"] == 3 and diff["open_review_items"] == 1
    flags = {f["code"] for f in diff["flags"]}
    assert flags == {"blasts_present", "nrbc_over_5", "left_shift", "unreviewed_cells"}


def test_case_detail_query_count_does_not_grow_with_cells(
    heme_api, smear, make_cell, django_assert_max_num_queries
) -> None:
    for _ in range(20):
        make_cell(smear["case"], label="NE")
    with django_assert_max_num_queries(10):
        assert heme_api.get(f"/api/cases/{smear['case'].pk}/").status_code == 200


def test_unknown_case_is_404_in_the_error_shape(heme_api, db) -> None:
    response = heme_api.get("/api/cases/424242/")
    assert response.status_code == 404
    assert response.json() == {
        "error": {"code": "not_found", "message": "Case 424242 does not exist.", "fields": {}}
    }


def test_signoff_is_refused_while_cells_are_open_then_accepted(heme_api, smear) -> None:
    case = smear["case"]
    refused = heme_api.post(f"/api/cases/{case.pk}/sign-off/")
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "cells_still_open" and error["fields"]["open_cells"] == "1"
    ReviewItem.objects.filter(cell__case=case).update(status="done")
    accepted = heme_api.post(f"/api/cases/{case.pk}/sign-off/")
    assert accepted.status_code == 200 and accepted.json()["status"] == "signed_off"
    event = AuditEvent.objects.get(action="case.signoff")
    assert event.actor.username == "u_hematologist" and event.after == {"status": "signed_off"}
    again = heme_api.post(f"/api/cases/{case.pk}/sign-off/")
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_signed_off"


def test_signoff_is_refused_for_unsettled_label_conflicts(heme_api, smear) -> None:
    ReviewItem.objects.all().delete()
    cell = smear["unlabelled"][0]
    cell.has_label_conflict = True
    cell.save(update_fields=["has_label_conflict"])
    assert heme_api.post(f"/api/cases/{smear['case'].pk}/sign-off/").status_code == 409


def test_json_with_a_nul_character_is_a_400_not_a_database_error(admin_api, db) -> None:
    response = admin_api.post(
        "/api/cases/", {"accession_id": "NUL-1", "metadata": {"k": "a\u0000b"}}, format="json"
    )
    assert response.status_code == 400
    assert "NUL" in response.json()["error"]["fields"]["metadata"]
