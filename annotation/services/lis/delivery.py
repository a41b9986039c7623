"""Delivery rows: made when a report becomes final, attempted by a Celery task, retried
with backoff, found again by housekeeping when their task was lost, re-sent by an admin.

States (docs/lis.md has the diagram)::

    pending --attempt ok--> sent
       |  \\--refused (HTTP 4xx, ACK AE/AR)--> failed
       \\--unreachable/5xx--> retrying --...--> sent | failed (retries spent)
    failed --admin re-sends--> pending

At least once, never twice in effect: an attempt holds the row's lock while it sends, a
second task for the same row skips it, and a row that is sent is never sent again. A
worker that dies after the receiver took the message but before the row was saved sends
it once more; the message carries the delivery id (Bundle.identifier, MSH-10) and the
FHIR entries are conditional updates, so the receiver can tell and the LIS ends the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from annotation.errors import ApplicationError, get_or_404
from annotation.models import CaseReport, LisDelivery
from annotation.services.audit import audit_event_create
from annotation.services.lis.fhir import MessageContext, fhir_bundle_build
from annotation.services.lis.hl7 import Hl7Addressing, control_id, oru_r01_build
from annotation.services.lis.transport import (
    Accepted,
    LisRejected,
    LisUnavailable,
    fhir_post,
    mllp_send,
)
from annotation.types import UserLike
from mlworker.taxonomy import CLASSES

logger = logging.getLogger(__name__)

OPEN_STATUSES = (LisDelivery.Status.PENDING, LisDelivery.Status.RETRYING)


@dataclass(frozen=True)
class Endpoint:
    kind: str
    address: str


def lis_endpoints() -> list[Endpoint]:
    """The configured receivers (settings from the environment); none: delivery is off."""
    endpoints: list[Endpoint] = []
    if settings.WBC_LIS_FHIR_URL:
        endpoints.append(Endpoint(LisDelivery.Kind.FHIR, settings.WBC_LIS_FHIR_URL))
    if settings.WBC_LIS_HL7_HOST and settings.WBC_LIS_HL7_PORT:
        host = settings.WBC_LIS_HL7_HOST
        host = f"[{host}]" if ":" in host else host  # an IPv6 address
        endpoints.append(Endpoint(LisDelivery.Kind.HL7, f"{host}:{settings.WBC_LIS_HL7_PORT}"))
    return endpoints


def _payload_build(delivery: LisDelivery) -> str:
    report = delivery.report
    content = report.content
    ctx = MessageContext(
        delivery_id=delivery.pk,
        case_id=report.case_id,
        version=report.version,
        class_names=content.get("class_names") or {c.code: c.name for c in CLASSES},
    )
    if delivery.kind == LisDelivery.Kind.FHIR:
        return json.dumps(fhir_bundle_build(content=content, ctx=ctx), ensure_ascii=False)
    return oru_r01_build(
        content=content,
        ctx=ctx,
        to=Hl7Addressing(
            sending_facility=settings.WBC_LIS_HL7_SENDING_FACILITY,
            receiving_application=settings.WBC_LIS_HL7_RECEIVING_APPLICATION,
            receiving_facility=settings.WBC_LIS_HL7_RECEIVING_FACILITY,
        ),
    )


def _payload_set(delivery: LisDelivery) -> bool:
    """Build and store the message; a report the builder cannot express fails the delivery
    with the reason instead of failing the signature that made the report final."""
    try:
        delivery.payload = _payload_build(delivery)
    except Exception as exc:  # pydantic's and hl7apy's validation errors, and any bug
        logger.exception(
            "LIS %s message for report %s not built", delivery.kind, delivery.report_id
        )
        delivery.payload = ""
        delivery.payload_hash = ""
        delivery.status = LisDelivery.Status.FAILED
        delivery.last_error = f"the message could not be built: {exc}"[:2000]
        delivery.next_attempt_at = None
        return False
    delivery.payload_hash = hashlib.sha256(delivery.payload.encode("utf-8")).hexdigest()
    return True


def _enqueue(delivery_id: int) -> None:
    from annotation.tasks.lis import lis_delivery_send_task  # the task module imports us

    lis_delivery_send_task.delay_on_commit(delivery_id)


def lis_report_finalised(*, report_id: int) -> list[LisDelivery]:
    """Record a delivery per configured receiver for a report that just became final and
    send each once the signature commits. Called inside the signing transaction
    (annotation/services/cases.py), so a rolled-back signature sends nothing. Repeating
    it for the same report makes no second delivery."""
    endpoints = lis_endpoints()
    if not endpoints:
        return []
    with transaction.atomic():
        report = CaseReport.objects.select_related("case").get(pk=report_id)
        made: list[LisDelivery] = []
        for endpoint in endpoints:
            delivery, created = LisDelivery.objects.get_or_create(
                report=report,
                kind=endpoint.kind,
                defaults={"endpoint": endpoint.address, "next_attempt_at": timezone.now()},
            )
            if not created:
                continue
            built = _payload_set(delivery)
            delivery.save(
                update_fields=["payload", "payload_hash", "status", "last_error", "next_attempt_at"]
            )
            audit_event_create(
                actor=None,
                action="lis.delivery.created",
                target_type="lis_delivery",
                target_id=delivery.pk,
                after={
                    "report_id": report.pk,
                    "case_id": report.case_id,
                    "version": report.version,
                    "kind": delivery.kind,
                    "endpoint": delivery.endpoint,
                    "status": delivery.status,
                    "payload_hash": delivery.payload_hash,
                },
            )
            if built:
                _enqueue(delivery.pk)
            made.append(delivery)
    return made


def _send(delivery: LisDelivery) -> Accepted:
    timeout = float(settings.WBC_LIS_TIMEOUT_SECONDS)
    if delivery.kind == LisDelivery.Kind.FHIR:
        return fhir_post(
            url=delivery.endpoint,
            token=settings.WBC_LIS_FHIR_TOKEN,
            body=delivery.payload,
            idempotency_key=f"lis-delivery-{delivery.pk}",
            timeout=timeout,
        )
    host, _, port = delivery.endpoint.rpartition(":")
    return mllp_send(
        host=host.strip("[]"),  # an IPv6 address is written [::1]:2575
        port=int(port),
        message=delivery.payload,
        control_id=control_id(delivery.pk),
        timeout=timeout,
    )


def _audit_outcome(delivery: LisDelivery) -> None:
    audit_event_create(
        actor=None,
        action=f"lis.delivery.{delivery.status}",
        target_type="lis_delivery",
        target_id=delivery.pk,
        after={
            "attempts": delivery.attempts,
            "response_code": delivery.response_code,
            "last_error": delivery.last_error,
        },
    )


def lis_delivery_attempt(
    *, delivery_id: int, retry_in: float | None
) -> tuple[LisDelivery | None, LisUnavailable | None]:
    """One attempt to send a delivery. ``retry_in``: seconds until the caller will try
    again if this attempt finds the receiver unavailable (None: it will not). Returns the
    row (None when there is nothing to do: gone, or another worker holds it) and the
    passing error when another attempt should follow.

    The row stays locked while the message is on the wire (at most the timeout), so a
    duplicate task skips it instead of sending a second copy."""
    max_attempts = int(settings.WBC_LIS_MAX_RETRIES) + 1
    with transaction.atomic():
        delivery = (
            LisDelivery.objects.select_for_update(skip_locked=True)
            .select_related("report")
            .filter(pk=delivery_id)
            .first()
        )
        if delivery is None or delivery.status not in OPEN_STATUSES:
            return delivery, None
        if not delivery.payload and not _payload_set(delivery):
            delivery.save(update_fields=["payload", "payload_hash", "status", "last_error"])
            _audit_outcome(delivery)
            return delivery, None
        now = timezone.now()
        delivery.attempts += 1
        delivery.last_attempt_at = now
        error: LisUnavailable | None = None
        try:
            accepted = _send(delivery)
        except LisRejected as exc:
            delivery.status = LisDelivery.Status.FAILED
            delivery.last_error = str(exc)[:2000]
            delivery.response_code = exc.response_code
            delivery.next_attempt_at = None
        except LisUnavailable as exc:
            delivery.response_code = exc.response_code
            if retry_in is None or delivery.attempts >= max_attempts:
                delivery.status = LisDelivery.Status.FAILED
                delivery.last_error = f"gave up after {delivery.attempts} attempts: {exc}"[:2000]
                delivery.next_attempt_at = None
            else:
                delivery.status = LisDelivery.Status.RETRYING
                delivery.last_error = str(exc)[:2000]
                delivery.next_attempt_at = now + timedelta(seconds=retry_in)
                error = exc
        else:
            delivery.status = LisDelivery.Status.SENT
            delivery.sent_at = timezone.now()
            delivery.response_code = accepted.response_code
            delivery.last_error = ""
            delivery.next_attempt_at = None
        delivery.save(
            update_fields=[
                "status",
                "attempts",
                "last_attempt_at",
                "next_attempt_at",
                "sent_at",
                "response_code",
                "last_error",
                "payload",
                "payload_hash",
            ]
        )
        if delivery.status != LisDelivery.Status.RETRYING:
            _audit_outcome(delivery)
    return delivery, error


def lis_deliveries_requeue_lost() -> int:
    """Housekeeping: send again the open deliveries whose next attempt is long overdue (a
    worker died holding the task, or the queue lost it). Safe to repeat: a duplicate
    task finds the row locked or already sent."""
    overdue = timezone.now() - timedelta(seconds=int(settings.WBC_LIS_LOST_AFTER_SECONDS))
    with transaction.atomic():
        lost = list(
            LisDelivery.objects.select_for_update(skip_locked=True)
            .filter(status__in=OPEN_STATUSES, next_attempt_at__lt=overdue)
            .values_list("pk", flat=True)
        )
        if lost:
            LisDelivery.objects.filter(pk__in=lost).update(next_attempt_at=timezone.now())
        for pk in lost:
            _enqueue(pk)
    return len(lost)


def lis_delivery_resend(*, delivery_id: int, user: UserLike) -> LisDelivery:
    """An admin sends a failed delivery again (the same message, the same id): its
    attempts start again from zero. Refused (409) for one that is sent or still being
    tried."""
    with transaction.atomic():
        delivery = get_or_404(
            LisDelivery.objects.select_for_update().select_related("report"),
            what="LIS delivery",
            pk=delivery_id,
        )
        if delivery.status != LisDelivery.Status.FAILED:
            raise ApplicationError(
                f"This delivery is {delivery.status}, so it cannot be sent again: only a "
                "failed delivery can. A pending or retrying one is still being tried.",
                code="lis_delivery_not_failed",
                status=409,
            )
        before = {
            "status": delivery.status,
            "attempts": delivery.attempts,
            "last_error": delivery.last_error,
        }
        delivery.status = LisDelivery.Status.PENDING
        delivery.attempts = 0
        delivery.last_error = ""
        delivery.response_code = ""
        delivery.next_attempt_at = timezone.now()
        delivery.save(
            update_fields=["status", "attempts", "last_error", "response_code", "next_attempt_at"]
        )
        audit_event_create(
            actor=user,
            action="lis.delivery.resend",
            target_type="lis_delivery",
            target_id=delivery.pk,
            before=before,
            after={"status": delivery.status},
        )
        _enqueue(delivery.pk)
    return delivery
