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


def test_differential_counts_reviewed_cells_and_shows_model_only_apart(
    heme_api, smear, django_assert_max_num_queries
) -> None:
    case = smear["case"]
    with django_assert_max_num_queries(10):
        response = heme_api.get(f"/api/cases/{case.pk}/")
    assert response.status_code == 200
    diff = response.json()["differential"]
    by_code = {row["code"]: row for row in diff["classes"]}
    # Reviewed in the portal: NE NE LY BL NR; model only: MO, MY, LY (the queued one).
    assert (by_code["NE"]["count"], by_code["NE"]["reviewed_in_portal"]) == (2, 2)
    assert (by_code["MO"]["count"], by_code["MO"]["model_only"]) == (0, 1)
    assert (by_code["LY"]["count"], by_code["LY"]["model_only"]) == (1, 1)
    assert diff["wbc_counted"] == 4  # reviewed: NE NE LY BL (the NRBC is not a WBC)
    assert diff["model_only_wbc"] == 3
    assert by_code["NE"]["percent"] == pytest.approx(50.0)
    assert by_code["MO"]["percent"] == 0.0 and by_code["MO"]["model_only_percent"] == 33.3
    assert by_code["NR"]["percent"] is None and by_code["NR"]["per_100_wbc"] == pytest.approx(25.0)
    assert diff["totals"]["normal"]["count"] == 3  # NE NE LY
    assert diff["totals"]["abnormal"]["count"] == 1  # BL
    assert diff["model_only"] == 3 and diff["open_review_items"] == 1
    assert diff["unidentified"] == 1  # the queued LY at 0.40
    assert diff["reviewed_in_portal"] == 5 and diff["imported"] == 0
    # Left shift is not flagged: the only myelocyte is the model's guess.
    flags = {f["code"] for f in diff["flags"]}
    assert flags == {"blasts_present", "nrbc_over_5", "unreviewed_cells"}


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
    # Sign-off now needs the password again and meets the lab's review rules
    # (tests/annotation/test_review_rules.py has the rules one by one).
    from annotation.models import ReviewRules
    from tests.annotation.api.conftest import PASSWORD

    ReviewRules.objects.update_or_create(pk=1, defaults={"count_target": 0})
    case = smear["case"]
    refused = heme_api.post(f"/api/cases/{case.pk}/sign-off/", {"password": PASSWORD})
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "signoff_rules_unmet"
    assert set(error["fields"]) == {"count_target_not_reached", "unidentified_cells"}
    for cell, code in zip(smear["unlabelled"], ("MO", "MY", "LY"), strict=True):
        labelled = heme_api.post(f"/api/cells/{cell.pk}/labels/", {"code": code})
        assert labelled.status_code == 201, labelled.content
    accepted = heme_api.post(f"/api/cases/{case.pk}/sign-off/", {"password": PASSWORD})
    assert accepted.status_code == 200, accepted.content
    assert accepted.json()["case"]["status"] == "signed_off"
    event = AuditEvent.objects.get(action="case.signoff")
    assert event.actor.username == "u_hematologist" and event.after["status"] == "signed_off"
    again = heme_api.post(f"/api/cases/{case.pk}/sign-off/", {"password": PASSWORD})
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_signed_off"


def test_signoff_is_refused_for_unsettled_label_conflicts(heme_api, smear) -> None:
    from tests.annotation.api.conftest import PASSWORD

    ReviewItem.objects.all().delete()
    cell = smear["unlabelled"][0]
    cell.has_label_conflict = True
    cell.save(update_fields=["has_label_conflict"])
    response = heme_api.post(f"/api/cases/{smear['case'].pk}/sign-off/", {"password": PASSWORD})
    assert response.status_code == 409
    assert "open_disagreements" in response.json()["error"]["fields"]


def test_json_with_a_nul_character_is_a_400_not_a_database_error(admin_api, db) -> None:
    response = admin_api.post(
        "/api/cases/", {"accession_id": "NUL-1", "metadata": {"k": "a\u0000b"}}, format="json"
    )
    assert response.status_code == 400
    assert "NUL" in response.json()["error"]["fields"]["metadata"]
