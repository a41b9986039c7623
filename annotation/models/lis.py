"""The signed report on its way to the laboratory information system (LIS): one row per
report and receiver (FHIR over HTTP, HL7 v2 over MLLP). See docs/lis.md."""

from __future__ import annotations

from django.db import models

from annotation.models.review import CaseReport


class LisDelivery(models.Model):
    """One final report sent (or to be sent) to one LIS endpoint. The payload is built once,
    when the report becomes final, and every attempt sends those same bytes; the row's id
    is the message's idempotency key (FHIR Bundle identifier, HL7 MSH-10), so a receiver
    can recognise a message it already has."""

    class Kind(models.TextChoices):
        FHIR = "fhir", "FHIR R4 DiagnosticReport (HTTP)"
        HL7 = "hl7", "HL7 v2.5 ORU^R01 (MLLP)"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"  # not attempted yet
        RETRYING = "retrying", "Retrying"  # an attempt failed for a passing reason; more follow
        SENT = "sent", "Sent"  # the receiver accepted it
        FAILED = "failed", "Failed"  # refused, or retries spent: an admin may re-send

    report = models.ForeignKey(CaseReport, on_delete=models.PROTECT, related_name="lis_deliveries")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    endpoint = models.CharField(max_length=500)  # the URL, or host:port for MLLP
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    response_code = models.CharField(max_length=16, blank=True, default="")  # HTTP status or MSA-1
    payload = models.TextField(blank=True, default="")
    payload_hash = models.CharField(max_length=64, blank=True, default="")  # sha256 hex
    created_at = models.DateTimeField(auto_now_add=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    # When the next attempt is due; housekeeping sends again a pending/retrying delivery
    # whose due time is long past (its task was lost).
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["report_id", "kind"]
        constraints = [
            models.UniqueConstraint(
                fields=["report", "kind"], name="one_lis_delivery_per_report_kind"
            )
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="lis_delivery_due")]

    def __str__(self) -> str:
        return f"{self.kind} delivery of report {self.report_id} ({self.status})"
