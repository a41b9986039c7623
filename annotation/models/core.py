"""The domain: cases, cell images, labels (append-only) and the audit trail."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from mlworker.taxonomy import CODES

DIFF14_CHOICES = [(code, code) for code in CODES]


class Case(models.Model):
    """One blood smear."""

    class Status(models.TextChoices):
        # New -> In review (first label, or reopened) -> [Awaiting second signature] ->
        # Signed off; reopened -> Amending -> [Awaiting second signature] -> Amended.
        NEW = "new", "New"
        IN_REVIEW = "in_review", "In review"
        AWAITING_SECOND = "awaiting_second", "Awaiting second signature"
        SIGNED_OFF = "signed_off", "Signed"
        AMENDING = "amending", "Reopened for amendment"
        AMENDED = "amended", "Amended"

    accession_id = models.CharField(max_length=128, unique=True)
    patient_pseudonym = models.CharField(max_length=128, blank=True, default="")
    diagnosis = models.CharField(max_length=255, blank=True, default="")
    source = models.CharField(max_length=255, blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True)
    # Independent labels each queued cell of this case needs (2+ = double reading).
    labels_required = models.PositiveSmallIntegerField(default=1)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.NEW)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [("signoff_case", "Can sign off a case's differential")]

    def __str__(self) -> str:
        return self.accession_id


class CellImage(models.Model):
    """One white-cell crop. Identical content (SHA-256) is always the same cell."""

    case = models.ForeignKey(Case, on_delete=models.PROTECT, related_name="cells")
    image = models.FileField(upload_to="cells/", max_length=255)
    sha256 = models.CharField(max_length=64, unique=True)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    original_filename = models.CharField(max_length=255, blank=True, default="")
    # The analyser's or dataset's own class name, kept verbatim. Empty if none was given.
    source_class_name = models.CharField(max_length=255, blank=True, default="")
    # Every distinct class name the sources gave this image; more than one mapped 14-Diff
    # code means the sources disagree and a person has to decide.
    source_labels = models.JSONField(default=list, blank=True)
    has_label_conflict = models.BooleanField(default=False)

    class Processing(models.TextChoices):
        PENDING = "pending", "Pending"
        SEGMENTED = "segmented", "Segmented"
        SCORED = "scored", "Scored"
        FAILED = "failed", "Failed"

    # Where the cell is in the pipeline; a cell that cannot be read says why.
    processing = models.CharField(
        max_length=16, choices=Processing.choices, default=Processing.PENDING, db_index=True
    )
    processing_error = models.TextField(blank=True, default="")
    current_label = models.OneToOneField(
        "Label", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        permissions = [
            ("label_cell", "Can label cells"),
            ("export_cells", "Can export labelled datasets"),
        ]
        indexes = [models.Index(fields=["case", "id"])]

    def __str__(self) -> str:
        return f"cell {self.pk} ({self.sha256[:12]})"


class Label(models.Model):
    """A 14-Diff label. Never updated in place: a new label supersedes the previous one."""

    class Source(models.TextChoices):
        IMPORTED = "imported", "Imported"
        HEMATOLOGIST = "hematologist", "Hematologist"
        ADJUDICATED = "adjudicated", "Adjudicated"

    cell = models.ForeignKey(CellImage, on_delete=models.PROTECT, related_name="labels")
    code = models.CharField(max_length=2, choices=DIFF14_CHOICES)
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT
    )
    source = models.CharField(max_length=16, choices=Source.choices)
    # Set on an independent read of a double-read review item: the label is kept but
    # does not count until the reads agree or a senior hematologist adjudicates.
    review_item = models.ForeignKey(
        "ReviewItem", null=True, blank=True, on_delete=models.PROTECT, related_name="reads"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # One-to-one: a label can be superseded once, so two concurrent relabels of the same
    # cell cannot both claim to replace the same label.
    supersedes = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="superseded_by"
    )

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(code__in=list(CODES)), name="label_code_is_a_14diff_code"
            ),
            models.CheckConstraint(
                condition=Q(source="imported") | Q(annotator__isnull=False),
                name="label_by_a_person_names_the_person",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.code} on cell {self.cell_id} ({self.source})"


class AuditEvent(models.Model):
    """Append-only record of who did what, with the state before and after."""

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT
    )
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=64)
    target_id = models.CharField(max_length=64, blank=True, default="")
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["target_type", "target_id"])]

    def __str__(self) -> str:
        return f"{self.action} {self.target_type}:{self.target_id}"


class ImportBatch(models.Model):
    """One run of an import (command, upload or API), with what it did and skipped."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    source = models.CharField(max_length=1024)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    files_total = models.PositiveIntegerField(default=0)
    files_done = models.PositiveIntegerField(default=0)
    summary = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [("import_cells", "Can import cells")]

    def __str__(self) -> str:
        return f"import {self.pk} of {self.source} ({self.status})"
