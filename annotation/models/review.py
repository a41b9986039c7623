"""Reviewing a case to a signed report: the lab's review rules, interpretive comments,
notes on flagged cells, reopenings and the signed report versions.
See "Sign-off and the report" in annotation/review_queue.md."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from annotation.models.core import Case, CellImage


class ReviewRules(models.Model):
    """The lab's sign-off rules: one row (pk 1), created with the defaults on first read."""

    class CountTarget(models.IntegerChoices):
        ALL = 0, "All cells"
        C100 = 100, "100 cells"
        C200 = 200, "200 cells"
        C400 = 400, "400 cells (ICSH reference)"

    # Reviewed white cells a case needs before it may be signed; 0 = every cell of the case.
    count_target = models.PositiveIntegerField(
        choices=CountTarget.choices, default=CountTarget.C100
    )
    two_person_signoff = models.BooleanField(default=False)
    # The lab's coded interpretive comments: [{"code": "...", "text": "..."}].
    coded_comments = models.JSONField(default=list, blank=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "review rules"

    def __str__(self) -> str:
        return f"review rules (target {self.count_target or 'all'})"


class CaseInterpretation(models.Model):
    """A case's interpretive comment: free text and codes from the lab's coded list.
    Editable until the case is signed."""

    case = models.OneToOneField(Case, on_delete=models.PROTECT, related_name="interpretation")
    text = models.TextField(blank=True, default="")
    coded = models.JSONField(default=list, blank=True)  # codes of ReviewRules.coded_comments
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"interpretation of case {self.case_id}"


class CellNote(models.Model):
    """A note on one (flagged) cell of a case, printed on the report."""

    cell = models.OneToOneField(CellImage, on_delete=models.PROTECT, related_name="note")
    note = models.TextField()
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["cell_id"]

    def __str__(self) -> str:
        return f"note on cell {self.cell_id}"


class CaseReport(models.Model):
    """One signed version of a case's report. ``content`` is frozen at the first signature;
    a later version amends the previous one, which stays readable."""

    case = models.ForeignKey(Case, on_delete=models.PROTECT, related_name="reports")
    version = models.PositiveIntegerField()  # 1, 2, ... per case
    content = models.JSONField()
    signed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    signed_at = models.DateTimeField()
    second_signed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    second_signed_at = models.DateTimeField(null=True, blank=True)
    amends = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="amended_by"
    )
    amend_reason = models.TextField(blank=True, default="")
    is_final = models.BooleanField(default=False)  # True once every required signature is there
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["case_id", "version"]
        constraints = [
            models.UniqueConstraint(fields=["case", "version"], name="one_report_per_case_version"),
            models.CheckConstraint(
                condition=Q(second_signed_by__isnull=True)
                | ~Q(second_signed_by=models.F("signed_by")),
                name="report_second_signer_is_another_user",
            ),
        ]

    def __str__(self) -> str:
        return f"report v{self.version} of case {self.case_id}"


class CaseReopening(models.Model):
    """A signed case reopened for amendment, with the reason; the next signature makes a
    new report version that amends ``report``."""

    case = models.ForeignKey(Case, on_delete=models.PROTECT, related_name="reopenings")
    report = models.ForeignKey(CaseReport, on_delete=models.PROTECT, related_name="reopenings")
    reason = models.TextField()
    reopened_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    reopened_at = models.DateTimeField()

    class Meta:
        ordering = ["reopened_at", "id"]

    def __str__(self) -> str:
        return f"reopening of case {self.case_id} (report v{self.report.version})"
