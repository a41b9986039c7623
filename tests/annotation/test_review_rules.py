"""The lab's review rules and sign-off: what counts as reviewed and unidentified, every
unmet rule listed before and at signing, the password asked again, two-person sign-off,
reopening with a reason and the amended version, the case status on the way."""

# The API tests' fixtures are imported below and used as test arguments (F811).
# ruff: noqa: F811
from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from annotation.models import AuditEvent, Case, CaseReport, Label, ReviewItem, ReviewRules
from annotation.services.routing import routing_config_update
from annotation.services.users import user_create_with_role
from tests.annotation.api.conftest import (  # noqa: F401 - fixtures
    PASSWORD,
    active_model,
    admin_api,
    clients,
    heme_api,
    make_cell,
    predict,
    queue,
    smear,
    users,
)

pytestmark = pytest.mark.django_db


def rules(**values: Any) -> None:
    ReviewRules.objects.update_or_create(pk=1, defaults=values)


def sign(client: APIClient, case: Case, password: str = PASSWORD) -> Any:
    return client.post(f"/api/cases/{case.pk}/sign-off/", {"password": password}, format="json")


def state(client: APIClient, case: Case) -> dict[str, Any]:
    response = client.get(f"/api/cases/{case.pk}/sign-off/")
    assert response.status_code == 200, response.content
    return response.json()


@pytest.fixture
def second_heme() -> tuple[Any, APIClient]:
    user = user_create_with_role(username="u_second", password=PASSWORD, role="hematologist")
    client = APIClient()
    client.force_authenticate(user)
    return user, client


@pytest.fixture
def reviewed_case(make_cell, active_model, users) -> Case:
    """Case DONE-1: 6 cells reviewed in the portal (NE NE NE LY LY MO) and 2 imported
    (NE, NR): 7 reviewed white cells and one NRBC; nothing open, every cell predicted."""
    case = Case.objects.create(accession_id="DONE-1", source="cellavision")
    heme = users["hematologist"]
    for code in ("NE", "NE", "NE", "LY", "LY", "MO"):
        predict(make_cell(case, label=code, annotator=heme), active_model, code, 0.9)
    for code in ("NE", "NR"):
        predict(make_cell(case, label=code), active_model, code, 0.9)
    return case


# --- the rules --------------------------------------------------------------------------


def test_review_rules_default_and_admin_changes_them_audited(admin_api, heme_api) -> None:
    assert heme_api.get("/api/review-rules/").json() | {"updated_at": None} == {
        "count_target": 100,
        "two_person_signoff": False,
        "coded_comments": [],
        "updated_by": None,
        "updated_at": None,
    }
    body = {
        "count_target": 200,
        "two_person_signoff": True,
        "coded_comments": [{"code": "C1", "text": "Suggest bone marrow examination."}],
    }
    changed = admin_api.put("/api/review-rules/", body, format="json")
    assert changed.status_code == 200, changed.content
    assert changed.json()["count_target"] == 200 and changed.json()["updated_by"] == "u_admin"
    event = AuditEvent.objects.get(action="review_rules.update")
    assert event.before["count_target"] == 100 and event.after == body
    assert (
        heme_api.put("/api/review-rules/", {"count_target": 400}, format="json").status_code == 403
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"count_target": 150}, "count_target"),
        ({"coded_comments": [{"code": "A", "text": "x"}, {"code": "A", "text": "y"}]}, "coded_comments"),
        ({"coded_comments": [{"code": "", "text": "x"}]}, "coded_comments"),
        ({"coded_comments": [{"code": "A", "text": "x", "colour": "red"}]}, "coded_comments"),
    ],
)  # fmt: skip
def test_review_rules_refuse_bad_values_naming_the_field(admin_api, body, field) -> None:
    response = admin_api.put("/api/review-rules/", body, format="json")
    assert response.status_code == 400, response.content
    assert any(key.startswith(field) for key in response.json()["error"]["fields"])


def test_unidentified_is_a_cell_without_label_queued_or_below_threshold(
    heme_api, make_cell, active_model
) -> None:
    routing_config_update(user=None, confidence_threshold=0.8)
    case = Case.objects.create(accession_id="UNID-1")
    predict(make_cell(case), active_model, "NE", 0.95)  # confident model-only: not counted
    predict(make_cell(case), active_model, "NE", 0.60)  # below the threshold
    queued = make_cell(case)
    predict(queued, active_model, "LY", 0.90)
    queue(queued, active_model, ["weak_class"])  # queued although confident
    make_cell(case)  # no prediction at all
    make_cell(case, label="MO")  # imported label: reviewed
    diff = heme_api.get(f"/api/cases/{case.pk}/").json()["differential"]
    assert (diff["unidentified"], diff["model_only"], diff["unclassified"]) == (3, 3, 1)
    assert (diff["reviewed"], diff["imported"], diff["wbc_counted"]) == (1, 1, 1)
    unmet = {u["code"] for u in state(heme_api, case)["unmet"]}
    assert unmet == {"count_target_not_reached", "unidentified_cells"}


def test_signoff_state_lists_every_unmet_rule_and_the_post_refuses_with_the_same(
    heme_api, smear, active_model
) -> None:
    case = smear["case"]
    # An open disagreement (reads awaiting adjudication) and a labelled cell still queued.
    disputed = smear["labelled"][0]
    ReviewItem.objects.create(cell=disputed, status="adjudication", labels_required=2)
    queue(smear["labelled"][1], active_model, ["audit"])
    before = state(heme_api, case)
    assert before["can_sign"] is False and before["next_step"] == "first_signature"
    codes = [u["code"] for u in before["unmet"]]
    assert codes == [
        "count_target_not_reached",
        "unidentified_cells",
        "cells_still_open",
        "open_disagreements",
    ]
    assert "4 of 100 white cells reviewed" in before["unmet"][0]["message"]
    refused = sign(heme_api, case)
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "signoff_rules_unmet" and list(error["fields"]) == codes
    assert not CaseReport.objects.exists()


def test_count_target_counts_reviewed_white_cells_portal_and_imported(
    heme_api, reviewed_case
) -> None:
    rules(count_target=100)
    first = state(heme_api, reviewed_case)["unmet"]
    assert [u["code"] for u in first] == ["count_target_not_reached"]
    assert "7 of 100" in first[0]["message"]  # the NRBC does not count
    rules(count_target=0)  # every cell: all 8 are reviewed
    assert state(heme_api, reviewed_case)["can_sign"] is True


def test_signing_needs_the_right_password_and_a_wrong_one_is_audited(
    heme_api, reviewed_case
) -> None:
    rules(count_target=0)
    wrong = sign(heme_api, reviewed_case, password="not-my-password")
    assert wrong.status_code == 403
    assert wrong.json()["error"]["code"] == "wrong_password"
    assert wrong.json()["error"]["fields"] == {"password": "not your password"}
    refusal = AuditEvent.objects.get(action="case.sign.refused")
    assert refusal.actor.username == "u_hematologist" and refusal.target_id == str(reviewed_case.pk)
    reviewed_case.refresh_from_db()
    assert reviewed_case.status == "new" and not CaseReport.objects.exists()
    missing = heme_api.post(f"/api/cases/{reviewed_case.pk}/sign-off/", {}, format="json")
    assert missing.status_code == 400 and "password" in missing.json()["error"]["fields"]

    signed = sign(heme_api, reviewed_case)
    assert signed.status_code == 200, signed.content
    body = signed.json()
    assert body["case"]["status"] == "signed_off"
    assert body["report"]["version"] == 1 and body["report"]["is_final"] is True
    assert body["report"]["signed_by"] == "u_hematologist"
    after = state(heme_api, reviewed_case)
    assert after["can_sign"] is False and after["next_step"] is None
    assert after["latest_report"]["signed_by"] == "u_hematologist"


def test_two_person_signoff_needs_a_second_different_user(
    heme_api, second_heme, reviewed_case
) -> None:
    rules(count_target=0, two_person_signoff=True)
    first = sign(heme_api, reviewed_case)
    assert first.status_code == 200, first.content
    assert first.json()["case"]["status"] == "awaiting_second"
    assert first.json()["report"]["is_final"] is False
    mine = state(heme_api, reviewed_case)
    assert mine["next_step"] == "second_signature" and mine["can_sign"] is False
    assert [u["code"] for u in mine["unmet"]] == ["second_signer_must_differ"]
    same = sign(heme_api, reviewed_case)
    assert same.status_code == 409
    assert same.json()["error"]["code"] == "second_signer_must_differ"

    user, client = second_heme
    assert state(client, reviewed_case)["can_sign"] is True
    second = sign(client, reviewed_case)
    assert second.status_code == 200, second.content
    report = CaseReport.objects.get(case=reviewed_case)
    assert report.is_final and report.second_signed_by == user
    assert [s["username"] for s in report.content["signers"]] == ["u_hematologist", "u_second"]
    reviewed_case.refresh_from_db()
    assert reviewed_case.status == "signed_off"
    assert AuditEvent.objects.filter(action="case.signoff.second", actor=user).exists()


def test_reopen_needs_a_reason_and_signing_again_amends_the_previous_version(
    heme_api, reviewed_case
) -> None:
    rules(count_target=0)
    url = f"/api/cases/{reviewed_case.pk}/reopen/"
    not_signed = heme_api.post(url, {"reason": "typo"}, format="json")
    assert not_signed.status_code == 409 and not_signed.json()["error"]["code"] == "not_signed"
    assert sign(heme_api, reviewed_case).status_code == 200
    cell = reviewed_case.cells.order_by("id").first()
    frozen = heme_api.post(f"/api/cells/{cell.pk}/labels/", {"code": "LY"}, format="json")
    assert frozen.status_code == 409 and frozen.json()["error"]["code"] == "case_signed"

    blank = heme_api.post(url, {"reason": "   "}, format="json")
    assert blank.status_code == 400 and "reason" in blank.json()["error"]["fields"]
    reopened = heme_api.post(url, {"reason": "Cell 1 is a lymphocyte."}, format="json")
    assert reopened.status_code == 200 and reopened.json()["status"] == "amending"
    assert state(heme_api, reviewed_case)["reopen_reason"] == "Cell 1 is a lymphocyte."
    assert heme_api.post(f"/api/cells/{cell.pk}/labels/", {"code": "LY"}).status_code == 201

    amended = sign(heme_api, reviewed_case)
    assert amended.status_code == 200, amended.content
    assert amended.json()["case"]["status"] == "amended"
    v1, v2 = CaseReport.objects.filter(case=reviewed_case).order_by("version")
    assert (v2.version, v2.amends_id, v2.amend_reason) == (2, v1.pk, "Cell 1 is a lymphocyte.")
    assert v2.content["amends_version"] == 1
    assert (v1.content["counts"]["NE"], v2.content["counts"]["NE"]) == (4, 3)
    assert v1.content["counts"]["LY"] == 2 and v2.content["counts"]["LY"] == 3
    actions = list(
        AuditEvent.objects.filter(target_type="case", target_id=str(reviewed_case.pk))
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == ["case.signoff", "case.reopen", "case.signoff"]
    # the first version stays readable, marked as superseded
    listed = heme_api.get(f"/api/cases/{reviewed_case.pk}/reports/").json()
    assert [(r["version"], r["superseded"]) for r in listed] == [(2, False), (1, True)]
    assert heme_api.get(f"/api/cases/{reviewed_case.pk}/reports/1/").status_code == 200


def test_case_goes_in_review_when_the_first_persons_label_lands(heme_api, make_cell) -> None:
    case = Case.objects.create(accession_id="FLOW-1")
    cell = make_cell(case, label="NE")  # an imported label leaves the case new
    assert Case.objects.get(pk=case.pk).status == "new"
    assert heme_api.post(f"/api/cells/{cell.pk}/labels/", {"code": "LY"}).status_code == 201
    assert Case.objects.get(pk=case.pk).status == "in_review"
    event = AuditEvent.objects.get(action="case.status")
    assert event.after == {"status": "in_review"}
    assert Label.objects.filter(cell=cell).count() == 2


def test_queue_next_with_a_case_gives_only_that_cases_cells(
    heme_api, make_cell, active_model
) -> None:
    here = Case.objects.create(accession_id="HERE-1")
    elsewhere = Case.objects.create(accession_id="ELSEWHERE-1")
    mine = [queue(make_cell(here), active_model, ["low_confidence"]) for _ in range(2)]
    other = queue(make_cell(elsewhere), active_model, ["low_confidence"])
    other.priority = 99.0  # the best item overall is in the other case
    other.save(update_fields=["priority"])
    got = heme_api.post("/api/queue/next/", {"count": 5, "case": here.pk}, format="json")
    assert got.status_code == 200, got.content
    ids = {item["id"] for item in got.json()["items"]}
    assert ids == {item.pk for item in mine}
    one = heme_api.post("/api/queue/next/", {"case": elsewhere.pk}, format="json")
    assert one.status_code == 200 and one.json()["id"] == other.pk
