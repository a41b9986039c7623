"""A final report as an HL7 v2.5 ORU^R01 message, built and validated with ``hl7apy``
(strict validation against the 2.5 message structure), and the receiver's ACK read back.

One OBR for the differential panel (LOINC 24318-8); per reported class one OBX with the
percentage (LOINC, the 14-Diff code as the alternate code) and one with the number of
cells counted, both with the class's position as OBX-4 sub-ID so a reader can pair them;
the total counted, NRBC per 100 WBC; comments, flags, signers and the amendment as NTE.
An amendment is sent with result status C (correction) in OBR-25 and OBX-11.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import parse_message

from annotation.services.lis.codes import (
    COUNTED,
    NRBC_PER_100_WBC,
    PANEL,
    PERCENT_LOINC,
    TOTAL_COUNTED,
)
from annotation.services.lis.fhir import MessageContext, conclusion_text, issued_at

SENDING_APPLICATION = "WBCPORTAL"
LOCAL_CODES = "99WBC"  # HL7 table 0396: 99zzz is a local coding system


@dataclass(frozen=True)
class Hl7Addressing:
    sending_facility: str
    receiving_application: str
    receiving_facility: str


@dataclass(frozen=True)
class Ack:
    code: str  # MSA-1: AA accepted, AE error, AR rejected (CA/CE/CR in enhanced mode)
    control_id: str  # MSA-2: the MSH-10 it acknowledges
    text: str  # MSA-3 and ERR, for a person

    @property
    def accepted(self) -> bool:
        return self.code in ("AA", "CA")


def escape(text: str) -> str:
    """HL7 escape sequences for the delimiters (hl7apy parses what it is given)."""
    return (
        text.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
        .replace("\r", " ")
        .replace("\n", " ")
    )


def hl7_timestamp(iso: str) -> str:
    """ISO 8601 -> HL7 DTM with its UTC offset (YYYYMMDDHHMMSS+ZZZZ)."""
    return datetime.fromisoformat(iso).strftime("%Y%m%d%H%M%S%z")


def control_id(delivery_id: int) -> str:
    """MSH-10: the delivery's id, the same on every attempt (a receiver dedupes on it)."""
    return f"WBC{delivery_id}"


def _number(value: float) -> str:
    return format(round(value, 2), "g")


def oru_r01_build(*, content: dict[str, Any], ctx: MessageContext, to: Hl7Addressing) -> str:
    """The message in ER7 (segments separated by CR), validated strictly by hl7apy."""
    case = content["case"]
    amended = bool(content.get("amends_version"))
    result_status = "C" if amended else "F"
    issued = hl7_timestamp(issued_at(content))
    m = Message("ORU_R01", version="2.5", validation_level=VALIDATION_LEVEL.STRICT)
    m.msh.msh_3 = SENDING_APPLICATION
    m.msh.msh_4 = escape(to.sending_facility)
    m.msh.msh_5 = escape(to.receiving_application)
    m.msh.msh_6 = escape(to.receiving_facility)
    m.msh.msh_7 = issued
    m.msh.msh_9 = "ORU^R01^ORU_R01"
    m.msh.msh_10 = control_id(ctx.delivery_id)
    m.msh.msh_11 = "P"
    m.msh.msh_12 = "2.5"
    m.msh.msh_18 = "UNICODE UTF-8"
    result = m.add_group("ORU_R01_PATIENT_RESULT")
    if case.get("patient_pseudonym"):
        patient = result.add_group("ORU_R01_PATIENT")
        pseudonym = escape(case["patient_pseudonym"])
        patient.pid.pid_1 = "1"
        patient.pid.pid_3 = f"{pseudonym}^^^{SENDING_APPLICATION}^PI"
        patient.pid.pid_5 = f"{pseudonym}^^^^^^S"  # HL7 table 0200 "S": a coded pseudo-name
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    order.obr.obr_1 = "1"
    if case.get("accession_id"):
        order.obr.obr_3 = f"{escape(case['accession_id'])}^{SENDING_APPLICATION}"
    order.obr.obr_4 = f"{PANEL[0]}^{PANEL[1]}^LN"
    order.obr.obr_22 = issued
    order.obr.obr_25 = result_status

    notes = conclusion_text(content).splitlines()
    notes += [
        f"Signed by {s.get('full_name') or s['username']} ({s['username']}) at {s['signed_at']}"
        for s in content.get("signers", [])
    ]
    if content.get("model_version"):
        notes.append(f"Pre-classified by model {content['model_version']}")
    for i, line in enumerate(notes, start=1):
        nte = order.add_segment("NTE")
        nte.nte_1 = str(i)
        nte.nte_3 = escape(line)

    seq = 0

    def obx(sub_id: str, code: str, value: str, units: str) -> None:
        nonlocal seq
        seq += 1
        observation = order.add_group("ORU_R01_OBSERVATION")
        observation.obx.obx_1 = str(seq)
        observation.obx.obx_2 = "NM"
        observation.obx.obx_3 = code
        if sub_id:
            observation.obx.obx_4 = sub_id
        observation.obx.obx_5 = value
        observation.obx.obx_6 = units
        observation.obx.obx_11 = result_status
        observation.obx.obx_14 = issued

    for position, (code, count) in enumerate(content["counts"].items(), start=1):
        term = PERCENT_LOINC.get(code)
        if term is None:
            continue
        name = escape(ctx.class_names.get(code, code))
        percent = float(content["percentages"].get(code) or 0.0)
        obx(
            str(position),
            f"{term.code}^{escape(term.display)}^LN^{code}^{name}^{LOCAL_CODES}",
            _number(percent),
            "%^percent^UCUM",
        )
        obx(
            str(position),
            f"{COUNTED[0]}-{code}^{name}: cells counted^{LOCAL_CODES}",
            str(int(count)),
            "{cells}^cells^UCUM",
        )
    obx("", f"{TOTAL_COUNTED[0]}^{TOTAL_COUNTED[1]}^{LOCAL_CODES}", str(content["total_wbc"]), "")
    if content.get("nrbc_per_100_wbc") is not None:
        obx(
            "",
            f"{NRBC_PER_100_WBC[0]}^{escape(NRBC_PER_100_WBC[1])}^LN",
            _number(float(content["nrbc_per_100_wbc"])),
            "/100{WBCs}^per 100 WBC^UCUM",
        )
    m.validate()  # raises hl7apy's ValidationError naming what is wrong
    return str(m.to_er7())


def ack_read(er7: str) -> Ack:
    """The receiver's ACK: raises ValueError when it is not an HL7 message with an MSA."""
    try:
        message = parse_message(er7.replace("\n", "\r").strip(), find_groups=False)
        msa = message.msa
        code = str(msa.msa_1.value)
        acked = str(msa.msa_2.value)
        text = str(msa.msa_3.value) if msa.msa_3.value else ""
    except Exception as exc:  # hl7apy raises many kinds for a malformed message
        raise ValueError(f"the receiver's answer is not an HL7 ACK ({exc})") from exc
    if not code:
        raise ValueError("the receiver's ACK has no MSA-1 acknowledgment code")
    errors = [str(seg.value) for seg in message.children if seg.name == "ERR"]
    return Ack(code=code, control_id=acked, text="; ".join([t for t in [text, *errors] if t]))
