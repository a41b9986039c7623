"""The result sent to the LIS: the FHIR R4 Bundle and the HL7 v2.5 ORU^R01 built from a
signed report, sent to real receivers on loopback (an HTTP server, an MLLP listener),
retried while a receiver is down, never delivered twice, failed with the reason when
refused, re-sent by an admin, and shown per case in the API."""

# The API tests' fixtures are imported below and used as test arguments (F811).
# ruff: noqa: F811
from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from pydantic import ValidationError

from annotation.models import AuditEvent, Case, CaseReport, LisDelivery, ReviewRules
from annotation.services.lis import (
    lis_deliveries_requeue_lost,
    lis_delivery_attempt,
    lis_report_finalised,
)
from annotation.services.lis.codes import LOINC, NOT_SENT, PERCENT_LOINC
from annotation.services.lis.fhir import MessageContext, fhir_bundle_build
from annotation.services.lis.hl7 import Hl7Addressing, oru_r01_build
from annotation.tasks.lis import lis_delivery_send_task
from mlworker.taxonomy import CLASSES, CODES
from tests.annotation.api.conftest import (  # noqa: F401 - fixtures
    PASSWORD,
    admin_api,
    clients,
    heme_api,
    make_cell,
    users,
)
from tests.annotation.lis_receivers import FhirReceiver, MllpReceiver, refusing_port

NAMES = {c.code: c.name for c in CLASSES}

CONTENT: dict[str, Any] = {
    "case": {
        "id": 7,
        "accession_id": "ACC-2026-0042",
        "patient_pseudonym": "PSN-981",
        "source": "cellavision",
        "diagnosis": "",
    },
    "version": 1,
    "counts": {
        "NE": 55,
        "LY": 30,
        "MO": 8,
        "EO": 3,
        "BA": 1,
        "ME": 0,
        "MY": 1,
        "PR": 0,
        "LR": 1,
        "LA": 0,
        "BL": 1,
        "PC": 0,
    },
    "percentages": {
        "NE": 55.0,
        "LY": 30.0,
        "MO": 8.0,
        "EO": 3.0,
        "BA": 1.0,
        "ME": 0.0,
        "MY": 1.0,
        "PR": 0.0,
        "LR": 1.0,
        "LA": 0.0,
        "BL": 1.0,
        "PC": 0.0,
    },
    "total_wbc": 100,
    "non_wbc": {"NR": 4, "AR": 2},
    "nrbc_per_100_wbc": 4.0,
    "model_only": {"NE": 2},
    "flags": [{"code": "blasts", "label": "Blasts present | review"}],
    "comments": {
        "text": "Smear reviewed; 1 blast ^ seen.\nSecond line & more",
        "coded": [{"code": "BM", "text": "Suggest bone marrow examination."}],
    },
    "flagged_cell_notes": [{"cell_id": 12, "note": "Auer rod?"}],
    "signers": [
        {"username": "ann", "full_name": "Ann Hämatolog", "signed_at": "2026-12-07T09:30:00+00:00"}
    ],
    "model_version": "resnet152-v3",
    "amends_version": None,
    "amend_reason": "",
}
CTX = MessageContext(delivery_id=41, case_id=7, version=1, class_names=NAMES)
TO = Hl7Addressing(sending_facility="LAB", receiving_application="LIS", receiving_facility="LAB")


def amended_content() -> dict[str, Any]:
    content = copy.deepcopy(CONTENT)
    content.update(version=2, amends_version=1, amend_reason="one blast was a monocyte")
    content["counts"].update(BL=0, MO=9)
    content["percentages"].update(BL=0.0, MO=9.0)
    return content


def observations_of(bundle: Bundle) -> dict[str, Observation]:
    """The Observations of a parsed Bundle by their LOINC code."""
    found: dict[str, Observation] = {}
    for entry in bundle.entry or []:
        if isinstance(entry.resource, Observation):
            for coding in entry.resource.code.coding or []:
                if coding.system == LOINC:
                    found[coding.code] = entry.resource
    return found


def report_of(bundle: Bundle) -> DiagnosticReport:
    reports = [e.resource for e in bundle.entry or [] if isinstance(e.resource, DiagnosticReport)]
    assert len(reports) == 1
    return reports[0]


def obx_by_code(message: Any) -> dict[str, Any]:
    result = message.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION
    return {o.obx.obx_3.obx_3_1.value: o.obx for o in result.ORU_R01_OBSERVATION}


# --- builders (no database) -------------------------------------------------------------


def test_every_class_has_one_loinc_row_or_a_stated_reason() -> None:
    for code in CODES:
        assert (code in PERCENT_LOINC) != (code in NOT_SENT), code
    assert len({t.code for t in PERCENT_LOINC.values()}) == len(PERCENT_LOINC)


def test_fhir_bundle_parses_with_fhir_resources_and_carries_the_report() -> None:
    data = fhir_bundle_build(content=CONTENT, ctx=CTX)
    bundle = Bundle.model_validate_json(json.dumps(data))  # what a receiver would parse
    assert bundle.type == "transaction"
    assert bundle.identifier.value == "lis-delivery-41"
    report = report_of(bundle)
    assert report.status == "final"
    assert report.code.coding[0].code == "24318-8"
    assert {i.value for i in report.identifier} >= {
        "case-7-report",
        "case-7-report-v1",
        "ACC-2026-0042",
    }
    assert report.subject.identifier.value == "PSN-981"
    assert [r.display for r in report.resultsInterpreter] == ["Ann Hämatolog"]
    assert "Blasts present | review" in report.conclusion and "Auer rod?" in report.conclusion
    assert report.extension[0].valueString == "resnet152-v3"

    obs = observations_of(bundle)
    # One Observation per class with a LOINC row, plus NRBC per 100 WBC; no AR, no NR share.
    assert set(obs) == {t.code for t in PERCENT_LOINC.values()} | {"19048-8"}
    for code, term in PERCENT_LOINC.items():
        o = obs[term.code]
        assert o.valueQuantity.value == CONTENT["percentages"][code]
        assert o.valueQuantity.code == "%"
        assert o.component[0].valueInteger == CONTENT["counts"][code]
        assert {c.code for c in o.code.coding} == {term.code, code}
        assert o.status == "final"
    assert obs["19048-8"].valueQuantity.value == 4.0
    # Every result reference of the report resolves to an entry of the Bundle.
    full_urls = {e.fullUrl for e in bundle.entry}
    assert {r.reference for r in report.result} <= full_urls
    assert all(e.request.method == "PUT" for e in bundle.entry)


def test_fhir_amendment_is_amended_and_names_the_version_it_replaces() -> None:
    ctx = MessageContext(delivery_id=42, case_id=7, version=2, class_names=NAMES)
    bundle = Bundle.model_validate(fhir_bundle_build(content=amended_content(), ctx=ctx))
    report = report_of(bundle)
    assert report.status == "amended"
    amends = {e.url: e for e in report.extension}
    replaced = amends["urn:wbcportal:fhir:extension:amends-report-version"].valueIdentifier
    assert replaced.value == "case-7-report-v1"
    assert amends["urn:wbcportal:fhir:extension:amend-reason"].valueString.startswith("one blast")
    obs = observations_of(bundle)
    assert obs["26446-5"].valueQuantity.value == 0.0 and obs["26446-5"].status == "amended"
    # The same identity as version 1's, so the conditional update replaces it.
    first = Bundle.model_validate(fhir_bundle_build(content=CONTENT, ctx=CTX))
    assert [e.request.url for e in first.entry] == [e.request.url for e in bundle.entry]


def test_fhir_builder_refuses_what_fhir_does_not_allow() -> None:
    broken = copy.deepcopy(CONTENT)
    broken["signers"][0]["signed_at"] = "yesterday"
    with pytest.raises(ValidationError):
        fhir_bundle_build(content=broken, ctx=CTX)


def test_hl7_oru_parses_strictly_with_hl7apy_and_carries_the_report() -> None:
    er7 = oru_r01_build(content=CONTENT, ctx=CTX, to=TO)
    message = parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT)
    assert message.validate()
    assert message.msh.msh_9.value == "ORU^R01^ORU_R01"
    assert message.msh.msh_10.value == "WBC41" and message.msh.msh_12.value == "2.5"
    order = message.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION
    assert order.obr.obr_3.obr_3_1.value == "ACC-2026-0042"
    assert order.obr.obr_25.value == "F"
    pid = message.ORU_R01_PATIENT_RESULT.ORU_R01_PATIENT.pid
    assert pid.pid_3.pid_3_1.value == "PSN-981"
    obx = obx_by_code(message)
    for code, term in PERCENT_LOINC.items():
        assert float(obx[term.code].obx_5.value) == CONTENT["percentages"][code]
        assert obx[term.code].obx_11.value == "F"
        count = obx[f"cells-counted-{code}"]
        assert int(count.obx_5.value) == CONTENT["counts"][code]
        assert count.obx_4.value == obx[term.code].obx_4.value  # paired by sub-ID
    assert float(obx["19048-8"].obx_5.value) == 4.0
    assert int(obx["wbc-counted"].obx_5.value) == 100
    # Delimiters in free text are escaped, not taken for structure.
    notes = [n.nte_3.value for n in order.nte]
    assert "Flag: Blasts present \\F\\ review" in notes
    assert "Smear reviewed; 1 blast \\S\\ seen." in notes and "Second line \\T\\ more" in notes


def test_hl7_amendment_is_sent_as_a_correction() -> None:
    ctx = MessageContext(delivery_id=43, case_id=7, version=2, class_names=NAMES)
    message = parse_message(oru_r01_build(content=amended_content(), ctx=ctx, to=TO))
    order = message.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION
    assert order.obr.obr_25.value == "C"
    assert {o.obx.obx_11.value for o in order.ORU_R01_OBSERVATION} == {"C"}
    assert any("replaces version 1" in n.nte_3.value for n in order.nte)
    assert float(obx_by_code(message)["26446-5"].obx_5.value) == 0.0


# --- deliveries, with real receivers ---------------------------------------------------


@pytest.fixture
def eager_tasks() -> Iterator[None]:
    """Tasks run in the calling process (the embedded mode), one attempt per call."""
    from wbcportal.celery import app

    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    try:
        yield
    finally:
        app.conf.task_always_eager = before


@pytest.fixture
def fhir_receiver() -> Iterator[FhirReceiver]:
    receiver = FhirReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def mllp_receiver() -> Iterator[MllpReceiver]:
    receiver = MllpReceiver().start()
    yield receiver
    receiver.stop()


def configure(settings: Any, *, fhir_url: str = "", hl7_port: int = 0) -> None:
    settings.WBC_LIS_FHIR_URL = fhir_url
    settings.WBC_LIS_FHIR_TOKEN = "s3cret" if fhir_url else ""
    settings.WBC_LIS_HL7_HOST = "127.0.0.1" if hl7_port else ""
    settings.WBC_LIS_HL7_PORT = hl7_port
    settings.WBC_LIS_TIMEOUT_SECONDS = 3


@pytest.fixture
def signable_case(make_cell, users) -> Case:
    """LIS-1: five white cells and one NRBC, each classified by a hematologist."""
    ReviewRules.objects.update_or_create(pk=1, defaults={"count_target": 0})
    case = Case.objects.create(
        accession_id="LIS-1", patient_pseudonym="PSN-5", source="cellavision"
    )
    for code in ("NE", "NE", "NE", "LY", "BL", "NR"):
        make_cell(case, label=code, annotator=users["hematologist"])
    return case


def sign(client: Any, case: Case, django_capture_on_commit_callbacks: Any) -> CaseReport:
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            f"/api/cases/{case.pk}/sign-off/", {"password": PASSWORD}, format="json"
        )
    assert response.status_code == 200, response.content
    return CaseReport.objects.filter(case=case).order_by("-version").first()


def test_no_delivery_when_no_receiver_is_configured(
    settings, heme_api, signable_case, eager_tasks, django_capture_on_commit_callbacks
) -> None:
    configure(settings)
    report = sign(heme_api, signable_case, django_capture_on_commit_callbacks)
    assert report.is_final and not LisDelivery.objects.exists()
    status = heme_api.get(f"/api/cases/{signable_case.pk}/lis-deliveries/").json()
    assert status == {"enabled": False, "receivers": [], "deliveries": []}


def test_sign_off_delivers_fhir_and_hl7_to_real_receivers(
    settings,
    heme_api,
    signable_case,
    eager_tasks,
    fhir_receiver,
    mllp_receiver,
    django_capture_on_commit_callbacks,
) -> None:
    configure(settings, fhir_url=fhir_receiver.url, hl7_port=mllp_receiver.port)
    report = sign(heme_api, signable_case, django_capture_on_commit_callbacks)
    fhir, hl7 = (LisDelivery.objects.get(report=report, kind=k) for k in ("fhir", "hl7"))
    assert (fhir.status, fhir.attempts, fhir.response_code) == ("sent", 1, "200")
    assert (hl7.status, hl7.attempts, hl7.response_code) == ("sent", 1, "AA")

    # What arrived parses with the libraries and carries the case's values.
    [posted] = fhir_receiver.received
    assert posted["path"] == "/fhir"
    assert posted["headers"]["Authorization"] == "Bearer s3cret"
    assert posted["headers"]["Content-Type"].startswith("application/fhir+json")
    bundle = Bundle.model_validate_json(posted["body"])
    assert bundle.identifier.value == f"lis-delivery-{fhir.pk}"
    assert report_of(bundle).identifier[-1].value == "LIS-1"
    obs = observations_of(bundle)
    content = report.content
    assert content["total_wbc"] == 5
    assert obs["26511-6"].valueQuantity.value == content["percentages"]["NE"] == 60.0
    assert obs["26511-6"].component[0].valueInteger == 3
    assert obs["26446-5"].valueQuantity.value == 20.0
    assert obs["19048-8"].valueQuantity.value == content["nrbc_per_100_wbc"] == 20.0

    [er7] = mllp_receiver.received
    message = parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT)
    assert message.msh.msh_10.value == f"WBC{hl7.pk}"
    obx = obx_by_code(message)
    assert float(obx["26511-6"].obx_5.value) == 60.0 and int(obx["wbc-counted"].obx_5.value) == 5

    # The message stored is the message sent.
    assert fhir.payload == posted["body"] and hl7.payload == er7
    status = heme_api.get(f"/api/cases/{signable_case.pk}/lis-deliveries/").json()
    assert status["enabled"] and status["receivers"] == ["fhir", "hl7"]
    assert [(d["kind"], d["status"], d["report_version"]) for d in status["deliveries"]] == [
        ("fhir", "sent", 1),
        ("hl7", "sent", 1),
    ]
    actions = set(
        AuditEvent.objects.filter(target_type="lis_delivery").values_list("action", flat=True)
    )
    assert actions == {"lis.delivery.created", "lis.delivery.sent"}
    # Finalising the same report again makes no second delivery.
    assert lis_report_finalised(report_id=report.pk) == []
    assert LisDelivery.objects.count() == 2


def test_receiver_down_keeps_the_message_then_housekeeping_delivers_it_once(
    settings, heme_api, signable_case, eager_tasks, django_capture_on_commit_callbacks
) -> None:
    down = refusing_port()
    port = down.getsockname()[1]
    configure(settings, fhir_url=f"http://127.0.0.1:{port}/fhir")
    report = sign(heme_api, signable_case, django_capture_on_commit_callbacks)
    delivery = LisDelivery.objects.get(report=report)
    assert delivery.status == "retrying" and delivery.attempts == 1
    assert "cannot reach" in delivery.last_error and delivery.next_attempt_at is not None
    row = heme_api.get(f"/api/cases/{signable_case.pk}/lis-deliveries/").json()["deliveries"][0]
    assert (row["status"], row["attempts"]) == ("retrying", 1) and "cannot reach" in row[
        "last_error"
    ]

    # Not overdue yet: housekeeping leaves it to its own retry.
    assert lis_deliveries_requeue_lost() == 0
    # The retry was lost (a worker died): once overdue, housekeeping sends it again, and
    # now the receiver is up.
    LisDelivery.objects.filter(pk=delivery.pk).update(
        next_attempt_at=timezone.now() - timedelta(seconds=settings.WBC_LIS_LOST_AFTER_SECONDS + 1)
    )
    down.close()
    receiver = FhirReceiver(port=port).start()
    try:
        with django_capture_on_commit_callbacks(execute=True):
            assert lis_deliveries_requeue_lost() == 1
        delivery.refresh_from_db()
        assert (delivery.status, delivery.attempts, delivery.last_error) == ("sent", 2, "")
        # A late duplicate of the task, and housekeeping again: nothing is sent twice.
        assert lis_delivery_send_task.apply(args=[delivery.pk]).get() == "sent"
        with django_capture_on_commit_callbacks(execute=True):
            assert lis_deliveries_requeue_lost() == 0
        assert len(receiver.received) == 1
        assert Bundle.model_validate_json(receiver.received[0]["body"]).identifier.value == (
            f"lis-delivery-{delivery.pk}"
        )
    finally:
        receiver.stop()


def test_refused_message_fails_with_the_reason_and_an_admin_can_send_it_again(
    settings,
    heme_api,
    admin_api,
    signable_case,
    eager_tasks,
    fhir_receiver,
    django_capture_on_commit_callbacks,
) -> None:
    configure(settings, fhir_url=fhir_receiver.url)
    fhir_receiver.status, fhir_receiver.outcome = 422, "Patient PSN-5 is unknown"
    report = sign(heme_api, signable_case, django_capture_on_commit_callbacks)
    delivery = LisDelivery.objects.get(report=report)
    assert (delivery.status, delivery.response_code, delivery.attempts) == ("failed", "422", 1)
    assert "Patient PSN-5 is unknown" in delivery.last_error
    url = f"/api/lis-deliveries/{delivery.pk}/retry/"
    assert heme_api.post(url).status_code == 403

    fhir_receiver.status = 200  # the LIS registered the patient
    with django_capture_on_commit_callbacks(execute=True):
        resent = admin_api.post(url)
    assert resent.status_code == 200, resent.content
    assert resent.json()["status"] == "pending"  # as it was when the admin's request answered
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("sent", 1)
    assert [r["body"] for r in fhir_receiver.received] == [delivery.payload] * 2  # same message
    again = admin_api.post(url)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "lis_delivery_not_failed"
    assert AuditEvent.objects.filter(
        action="lis.delivery.resend", target_id=str(delivery.pk)
    ).exists()
    assert admin_api.post("/api/lis-deliveries/999999/retry/").status_code == 404


def test_negative_hl7_ack_fails_with_the_receivers_reason(
    settings,
    heme_api,
    signable_case,
    eager_tasks,
    mllp_receiver,
    django_capture_on_commit_callbacks,
) -> None:
    configure(settings, hl7_port=mllp_receiver.port)
    mllp_receiver.ack_code, mllp_receiver.ack_text = "AR", "Unknown order ACC"
    report = sign(heme_api, signable_case, django_capture_on_commit_callbacks)
    delivery = LisDelivery.objects.get(report=report)
    assert (delivery.status, delivery.response_code) == ("failed", "AR")
    assert "Unknown order ACC" in delivery.last_error


def test_retries_spent_fail_the_delivery_and_say_so(settings, heme_api, signable_case) -> None:
    down = refusing_port()
    configure(settings, fhir_url=f"http://127.0.0.1:{down.getsockname()[1]}/fhir")
    settings.WBC_LIS_MAX_RETRIES = 1
    with_no_tasks = heme_api.post(
        f"/api/cases/{signable_case.pk}/sign-off/", {"password": PASSWORD}, format="json"
    )  # the db fixture never commits: no task runs, the row waits
    assert with_no_tasks.status_code == 200
    delivery = LisDelivery.objects.get()
    assert delivery.status == "pending" and delivery.attempts == 0
    first, error = lis_delivery_attempt(delivery_id=delivery.pk, retry_in=1)
    assert first.status == "retrying" and error is not None
    last, error = lis_delivery_attempt(delivery_id=delivery.pk, retry_in=1)
    assert (last.status, last.attempts, error) == ("failed", 2, None)
    assert last.last_error.startswith("gave up after 2 attempts: cannot reach")
    down.close()


def test_an_amendment_sends_an_amended_report_naming_the_previous_version(
    settings,
    heme_api,
    signable_case,
    eager_tasks,
    fhir_receiver,
    django_capture_on_commit_callbacks,
) -> None:
    configure(settings, fhir_url=fhir_receiver.url)
    sign(heme_api, signable_case, django_capture_on_commit_callbacks)
    reopened = heme_api.post(
        f"/api/cases/{signable_case.pk}/reopen/", {"reason": "recount"}, format="json"
    )
    assert reopened.status_code == 200, reopened.content
    second = sign(heme_api, signable_case, django_capture_on_commit_callbacks)
    assert second.version == 2
    first_bundle, amended = (Bundle.model_validate_json(r["body"]) for r in fhir_receiver.received)
    assert report_of(first_bundle).status == "final"
    report = report_of(amended)
    assert report.status == "amended"
    assert {e.url: e for e in report.extension}[
        "urn:wbcportal:fhir:extension:amends-report-version"
    ].valueIdentifier.value == f"case-{signable_case.pk}-report-v1"
    versions = heme_api.get(f"/api/cases/{signable_case.pk}/lis-deliveries/").json()["deliveries"]
    assert [(d["report_version"], d["status"]) for d in versions] == [(2, "sent"), (1, "sent")]


# --- a real Celery worker ---------------------------------------------------------------


@pytest.mark.slow
def test_real_worker_retries_with_backoff_until_the_receivers_are_up_and_delivers_once(
    settings, redis_url, tmp_path: Path, transactional_db, clients
) -> None:
    from tests.conftest import start_worker, wait_for_worker
    from tests.processes import stop_process
    from wbcportal.celery import app

    fhir_down, hl7_down = refusing_port(), refusing_port()
    fhir_port, hl7_port = fhir_down.getsockname()[1], hl7_down.getsockname()[1]
    lis_env = {
        "WBC_LIS_FHIR_URL": f"http://127.0.0.1:{fhir_port}/fhir",
        "WBC_LIS_HL7_HOST": "127.0.0.1",
        "WBC_LIS_HL7_PORT": str(hl7_port),
        "WBC_LIS_TIMEOUT_SECONDS": "3",
        "WBC_LIS_RETRY_BACKOFF_SECONDS": "1",
        "WBC_LIS_MAX_RETRIES": "8",
    }
    configure(settings, fhir_url=lis_env["WBC_LIS_FHIR_URL"], hl7_port=hl7_port)
    app.conf.task_always_eager = False
    app.conf.broker_url = redis_url
    log = tmp_path / "worker.log"
    proc = start_worker(redis_url, log=log, extra_env=lis_env)
    receivers: list[Any] = []
    try:
        wait_for_worker(app, proc, log)
        from annotation.services.users import user_create_with_role

        heme = user_create_with_role(username="lis_heme", password=PASSWORD, role="hematologist")
        ReviewRules.objects.update_or_create(pk=1, defaults={"count_target": 0})
        case = Case.objects.create(accession_id="LIS-W", patient_pseudonym="PSN-W")
        from rest_framework.test import APIClient

        from annotation.models import CellImage, Label

        for i, code in enumerate(("NE", "LY", "LY", "MO")):
            cell = CellImage.objects.create(
                case=case, image=f"cells/w{i}.jpg", sha256=f"{i:064x}", width=64, height=64
            )
            label = Label.objects.create(
                cell=cell, code=code, source="hematologist", annotator=heme
            )
            cell.current_label = label
            cell.save(update_fields=["current_label"])
        client = APIClient()
        client.force_authenticate(heme)
        signed = client.post(
            f"/api/cases/{case.pk}/sign-off/", {"password": PASSWORD}, format="json"
        )
        assert signed.status_code == 200, signed.content

        def deliveries() -> list[LisDelivery]:
            return list(LisDelivery.objects.order_by("kind"))

        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if all(d.attempts >= 2 for d in deliveries()) and len(deliveries()) == 2:
                break
            time.sleep(0.2)
        rows = deliveries()
        assert [(d.kind, d.status) for d in rows] == [("fhir", "retrying"), ("hl7", "retrying")], (
            log.read_text()[-3000:]
        )
        assert all(d.attempts >= 2 and "cannot reach" in d.last_error for d in rows)

        fhir_down.close()
        hl7_down.close()
        receivers = [FhirReceiver(port=fhir_port).start(), MllpReceiver(port=hl7_port).start()]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(d.status != "sent" for d in deliveries()):
            time.sleep(0.3)
        rows = deliveries()
        assert [d.status for d in rows] == ["sent", "sent"], log.read_text()[-3000:]
        time.sleep(2)  # room for a duplicate to show up, if there were one
        fhir_receiver, mllp_receiver = receivers
        assert len(fhir_receiver.received) == 1 and len(mllp_receiver.received) == 1
        bundle = Bundle.model_validate_json(fhir_receiver.received[0]["body"])
        assert observations_of(bundle)["26478-8"].valueQuantity.value == 50.0
        message = parse_message(mllp_receiver.received[0], validation_level=VALIDATION_LEVEL.STRICT)
        assert float(obx_by_code(message)["26485-3"].obx_5.value) == 25.0
    finally:
        stop_process(proc)
        for receiver in receivers:
            receiver.stop()
        fhir_down.close()
        hl7_down.close()
