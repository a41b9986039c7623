"""A final report as a FHIR transaction Bundle: one DiagnosticReport (status ``final``, or
``amended`` for an amendment, naming the version it replaces) and one Observation per
reported class, built from the frozen report content alone and validated with
``fhir.resources``.

FHIR version: the classes of ``fhir.resources.R4B`` (FHIR 4.3.0). R4B changed no element
of Bundle, DiagnosticReport or Observation from R4 (4.0.1) (its changes are in the
medication-definition, evidence and subscription resources), so what validates here is
valid R4. The last ``fhir.resources`` with the 4.0.1 classes (6.x) needs pydantic 1,
which is no longer maintained; docs/lis.md.

Every entry is a conditional update (PUT by identifier): the case's report and its
observations keep one identity across versions, so an amendment replaces the values
the LIS holds (the server keeps the earlier version in its history), and sending the
same Bundle twice leaves the LIS as once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B.bundle import Bundle

from annotation.services.lis.codes import (
    COUNTED,
    LOINC,
    NRBC_PER_100_WBC,
    PANEL,
    PERCENT_LOINC,
    PORTAL_ACCESSION,
    PORTAL_CLASS_SYSTEM,
    PORTAL_CODE_SYSTEM,
    PORTAL_IDENTIFIER,
    PORTAL_PATIENT,
    TOTAL_COUNTED,
    UCUM,
)

PORTAL_USER = "urn:wbcportal:user"
EXT_AMENDS = "urn:wbcportal:fhir:extension:amends-report-version"
EXT_AMEND_REASON = "urn:wbcportal:fhir:extension:amend-reason"
EXT_MODEL_VERSION = "urn:wbcportal:fhir:extension:preclassified-by-model"
_UUID_NAMESPACE = uuid.UUID("0f6b2f4e-3d1c-5b7a-9e21-7c4a1d2e3f40")


@dataclass(frozen=True)
class MessageContext:
    """What a message needs beyond the report content: the delivery's id (the message's
    idempotency key) and the report's case and version."""

    delivery_id: int
    case_id: int
    version: int
    class_names: dict[str, str]


def _report_identifier(case_id: int, version: int | None = None) -> str:
    base = f"case-{case_id}-report"
    return base if version is None else f"{base}-v{version}"


def _observation_identifier(case_id: int, what: str) -> str:
    return f"case-{case_id}-{what}"


def _full_url(case_id: int, version: int, what: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_UUID_NAMESPACE, f'{case_id}/{version}/{what}')}"


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def issued_at(content: dict[str, Any]) -> str:
    """The report's time: its last signature (the one that made it final)."""
    signers = content.get("signers") or []
    return str(signers[-1]["signed_at"])


def conclusion_text(content: dict[str, Any]) -> str:
    """The report's words for a reader of the LIS: flags, comments, the amendment."""
    lines: list[str] = []
    if content.get("amends_version"):
        lines.append(
            f"Amended report (replaces version {content['amends_version']}): "
            f"{content.get('amend_reason', '')}".strip()
        )
    lines += [f"Flag: {flag['label']}" for flag in content.get("flags", [])]
    comments = content.get("comments") or {}
    lines += [f"{c['code']}: {c['text']}" for c in comments.get("coded", [])]
    if comments.get("text"):
        lines.append(str(comments["text"]))
    lines += [f"Cell {n['cell_id']}: {n['note']}" for n in content.get("flagged_cell_notes", [])]
    return "\n".join(lines)


def _entry(full_url: str, resource: dict[str, Any], identifier: str) -> dict[str, Any]:
    kind = resource["resourceType"]
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {"method": "PUT", "url": f"{kind}?identifier={PORTAL_IDENTIFIER}|{identifier}"},
    }


def fhir_bundle_build(*, content: dict[str, Any], ctx: MessageContext) -> dict[str, Any]:
    """The transaction Bundle as JSON-ready data, validated by fhir.resources (raises
    pydantic's ValidationError when a resource is malformed)."""
    case = content["case"]
    amended = bool(content.get("amends_version"))
    status = "amended" if amended else "final"
    issued = issued_at(content)
    subject: dict[str, Any] | None = None
    if case.get("patient_pseudonym"):
        subject = {
            "identifier": {"system": PORTAL_PATIENT, "value": case["patient_pseudonym"]},
            "display": case["patient_pseudonym"],
        }
    lab = [
        _coding(
            "http://terminology.hl7.org/CodeSystem/observation-category", "laboratory", "Laboratory"
        )
    ]

    def observation(
        what: str, code: list[dict[str, str]], **value: Any
    ) -> tuple[str, dict[str, Any]]:
        resource: dict[str, Any] = {
            "resourceType": "Observation",
            "identifier": [
                {"system": PORTAL_IDENTIFIER, "value": _observation_identifier(ctx.case_id, what)}
            ],
            "status": status,
            "category": [{"coding": lab}],
            "code": {"coding": code},
            "issued": issued,
            **value,
        }
        if subject:
            resource["subject"] = subject
        return what, resource

    observations: list[tuple[str, dict[str, Any]]] = []
    for code, count in content["counts"].items():
        term = PERCENT_LOINC.get(code)
        if term is None:
            continue
        name = ctx.class_names.get(code, code)
        observations.append(
            observation(
                code,
                [
                    _coding(LOINC, term.code, term.display),
                    _coding(PORTAL_CLASS_SYSTEM, code, name),
                ],
                valueQuantity={
                    "value": float(content["percentages"].get(code) or 0.0),
                    "unit": "%",
                    "system": UCUM,
                    "code": "%",
                },
                component=[
                    {
                        "code": {"coding": [_coding(PORTAL_CODE_SYSTEM, *COUNTED)]},
                        "valueInteger": int(count),
                    }
                ],
            )
        )
    observations.append(
        observation(
            "wbc-counted",
            [_coding(PORTAL_CODE_SYSTEM, *TOTAL_COUNTED)],
            valueInteger=int(content["total_wbc"]),
        )
    )
    if content.get("nrbc_per_100_wbc") is not None:
        observations.append(
            observation(
                "nrbc",
                [_coding(LOINC, *NRBC_PER_100_WBC)],
                valueQuantity={
                    "value": float(content["nrbc_per_100_wbc"]),
                    "unit": "/100 WBC",
                    "system": UCUM,
                    "code": "/100{WBCs}",
                },
            )
        )

    extensions: list[dict[str, Any]] = []
    if amended:
        extensions.append(
            {
                "url": EXT_AMENDS,
                "valueIdentifier": {
                    "system": PORTAL_IDENTIFIER,
                    "value": _report_identifier(ctx.case_id, int(content["amends_version"])),
                },
            }
        )
        if content.get("amend_reason"):
            extensions.append({"url": EXT_AMEND_REASON, "valueString": content["amend_reason"]})
    if content.get("model_version"):
        extensions.append({"url": EXT_MODEL_VERSION, "valueString": content["model_version"]})
    identifiers: list[dict[str, Any]] = [
        {"use": "official", "system": PORTAL_IDENTIFIER, "value": _report_identifier(ctx.case_id)},
        {
            "use": "secondary",
            "system": PORTAL_IDENTIFIER,
            "value": _report_identifier(ctx.case_id, ctx.version),
        },
    ]
    if case.get("accession_id"):
        identifiers.append(
            {
                "type": {
                    "coding": [
                        _coding(
                            "http://terminology.hl7.org/CodeSystem/v2-0203",
                            "ACSN",
                            "Accession ID",
                        )
                    ]
                },
                "system": PORTAL_ACCESSION,
                "value": case["accession_id"],
            }
        )
    coded = (content.get("comments") or {}).get("coded", [])
    conclusion_codes = [
        {"coding": [_coding(f"{PORTAL_CODE_SYSTEM}:comment", c["code"], c["text"])]} for c in coded
    ] + [
        {"coding": [_coding(f"{PORTAL_CODE_SYSTEM}:flag", f["code"], f["label"])]}
        for f in content.get("flags", [])
    ]
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": identifiers,
        "status": status,
        "category": [
            {
                "coding": [
                    _coding("http://terminology.hl7.org/CodeSystem/v2-0074", "HM", "Hematology")
                ]
            }
        ],
        "code": {"coding": [_coding(LOINC, *PANEL)]},
        "issued": issued,
        "resultsInterpreter": [
            {
                "identifier": {"system": PORTAL_USER, "value": s["username"]},
                "display": s.get("full_name") or s["username"],
            }
            for s in content.get("signers", [])
        ],
        "result": [
            {"reference": _full_url(ctx.case_id, ctx.version, what)} for what, _ in observations
        ],
    }
    if subject:
        report["subject"] = subject
    if extensions:
        report["extension"] = extensions
    if text := conclusion_text(content):
        report["conclusion"] = text
    if conclusion_codes:
        report["conclusionCode"] = conclusion_codes
    entries = [
        _entry(
            _full_url(ctx.case_id, ctx.version, "report"),
            report,
            _report_identifier(ctx.case_id),
        )
    ] + [
        _entry(
            _full_url(ctx.case_id, ctx.version, what),
            resource,
            _observation_identifier(ctx.case_id, what),
        )
        for what, resource in observations
    ]
    bundle = {
        "resourceType": "Bundle",
        "identifier": {"system": PORTAL_IDENTIFIER, "value": f"lis-delivery-{ctx.delivery_id}"},
        "type": "transaction",
        "timestamp": issued,
        "entry": entries,
    }
    validated = Bundle.model_validate(bundle)
    return validated.model_dump(mode="json", exclude_none=True)  # type: ignore[no-any-return]
