"""Getting a built message to the LIS: HTTP POST for FHIR, MLLP over TCP for HL7.

Each function makes one attempt and says how it went: it returns the receiver's answer
when the message was accepted, raises :class:`LisUnavailable` when trying again later
may work (no connection, a timeout, HTTP 5xx/408/429, an ACK for another message) and
:class:`LisRejected` when the receiver refused the message (HTTP 4xx, an AE/AR ACK):
sending the same bytes again would be refused again.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass

import requests

from annotation.services.lis.hl7 import ack_read

MLLP_START = b"\x0b"
MLLP_END = b"\x1c\r"
_RETRYABLE_HTTP = {408, 425, 429}
_MAX_ANSWER_BYTES = 1 << 20


class LisUnavailable(Exception):
    """The receiver could not take the message now; another attempt may succeed."""

    def __init__(self, message: str, *, response_code: str = "") -> None:
        super().__init__(message)
        self.response_code = response_code


class LisRejected(Exception):
    """The receiver refused the message."""

    def __init__(self, message: str, *, response_code: str = "") -> None:
        super().__init__(message)
        self.response_code = response_code


@dataclass(frozen=True)
class Accepted:
    response_code: str  # the HTTP status, or the ACK's MSA-1
    detail: str


def _operation_outcome_text(body: str) -> str:
    """The diagnostics of a FHIR OperationOutcome, else the start of the body."""
    try:
        data = json.loads(body)
        issues = data.get("issue", []) if isinstance(data, dict) else []
        texts = [
            str(i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code"))
            for i in issues
            if isinstance(i, dict)
        ]
        if texts:
            return "; ".join(texts)[:500]
    except ValueError:
        pass
    return body.strip()[:500]


def fhir_post(*, url: str, token: str, body: str, idempotency_key: str, timeout: float) -> Accepted:
    headers = {
        "Content-Type": "application/fhir+json; charset=utf-8",
        "Accept": "application/fhir+json",
        # Not a FHIR header, but a common one: lets a receiver spot a repeated delivery.
        "X-Request-Id": idempotency_key,
    }
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = requests.post(
            url, data=body.encode("utf-8"), headers=headers, timeout=timeout, allow_redirects=False
        )
    except requests.Timeout as exc:
        raise LisUnavailable(f"no answer from {url} within {timeout:g} s") from exc
    except requests.RequestException as exc:
        raise LisUnavailable(f"cannot reach {url}: {exc.__class__.__name__}: {exc}") from exc
    code = str(response.status_code)
    if 200 <= response.status_code < 300:
        return Accepted(response_code=code, detail="")
    reason = f"HTTP {code} from {url}: {_operation_outcome_text(response.text)}"
    if response.status_code >= 500 or response.status_code in _RETRYABLE_HTTP:
        raise LisUnavailable(reason, response_code=code)
    raise LisRejected(reason, response_code=code)


def mllp_frame(message: str) -> bytes:
    return MLLP_START + message.encode("utf-8") + MLLP_END


def mllp_unframe(data: bytes) -> str:
    start = data.find(MLLP_START)
    end = data.find(MLLP_END, start + 1)
    if start < 0 or end < 0:
        raise ValueError("not an MLLP frame")
    return data[start + 1 : end].decode("utf-8", errors="replace")


def mllp_send(*, host: str, port: int, message: str, control_id: str, timeout: float) -> Accepted:
    """Send one framed message and wait for its ACK on the same connection."""
    where = f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall(mllp_frame(message))
            answer = b""
            while MLLP_END not in answer:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                answer += chunk
                if len(answer) > _MAX_ANSWER_BYTES:
                    break
    except TimeoutError as exc:
        raise LisUnavailable(f"no ACK from {where} within {timeout:g} s") from exc
    except OSError as exc:
        raise LisUnavailable(f"cannot reach {where}: {exc.__class__.__name__}: {exc}") from exc
    try:
        ack = ack_read(mllp_unframe(answer))
    except ValueError as exc:
        raise LisUnavailable(f"{where} closed the connection without an ACK ({exc})") from exc
    if ack.control_id != control_id:
        raise LisUnavailable(
            f"{where} acknowledged message {ack.control_id!r}, not {control_id!r}",
            response_code=ack.code,
        )
    if ack.accepted:
        return Accepted(response_code=ack.code, detail=ack.text)
    raise LisRejected(
        f"{where} answered {ack.code}: {ack.text or 'no reason given'}", response_code=ack.code
    )
