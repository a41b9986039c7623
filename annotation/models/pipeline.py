"""The active-learning loop: segmentations, predictions, the review queue, the model
registry, training and export jobs. See annotation/review_queue.md."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from annotation.models.core import CellImage, Label


class Segmentation(models.Model):
    """One segmentation of a cell by one version of the segmentation method."""

    class Status(models.TextChoices):
        OK = "ok", "OK"
        FAILED = "failed", "Failed"

    cell = models.ForeignKey(CellImage, on_delete=models.CASCADE, related_name="segmentations")
    method_version = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=Status.choices)
    # One 8-bit PNG like the expert masks: 0 background, 128 cytoplasm, 255 nucleus.
    mask = models.FileField(upload_to="masks/", max_length=255, blank=True)
    quality = models.FloatField(default=0.0)
    failure_reason = models.TextField(blank=True, default="")
    wbc_area = models.PositiveIntegerField(null=True, blank=True)
    nucleus_area = models.PositiveIntegerField(null=True, blank=True)
    timings_ms = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["cell", "method_version"], name="one_segmentation_per_cell_and_method"
            )
        ]


class ModelVersionQuerySet(models.QuerySet["ModelVersion"]):
    def active(self) -> ModelVersion | None:
        """The one active version (a database constraint allows at most one), or None."""
        return self.filter(status=ModelVersion.Status.ACTIVE).first()


class ModelVersion(models.Model):
    class Status(models.TextChoices):
        TRAINING = "training", "Training"
        CANDIDATE = "candidate", "Candidate"
        ACTIVE = "active", "Active"
        RETIRED = "retired", "Retired"
        FAILED = "failed", "Failed"

    name = models.CharField(max_length=64, unique=True)
    arch = models.CharField(max_length=32)
    class_codes = models.JSONField(default=list)
    image_size = models.PositiveIntegerField(default=224)
    checkpoint = models.FileField(upload_to="models/", max_length=255, blank=True)
    temperature = models.FloatField(default=1.0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.TRAINING)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL)
    metrics = models.JSONField(default=dict, blank=True)
    per_class_tpr = models.JSONField(default=dict, blank=True)
    # Which labels trained it: counts per class and the newest label id included.
    training_snapshot = models.JSONField(default=dict, blank=True)
    triggered_by = models.CharField(max_length=64, blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    promoted_at = models.DateTimeField(null=True, blank=True)

    objects = ModelVersionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        permissions = [("manage_models", "Can train, promote and roll back model versions")]
        constraints = [
            models.UniqueConstraint(
                fields=["status"], condition=Q(status="active"), name="at_most_one_active_model"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"


class Prediction(models.Model):
    """The scores of one model version for one cell; upserted, so scoring is idempotent."""

    cell = models.ForeignKey(CellImage, on_delete=models.CASCADE, related_name="predictions")
    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.CASCADE, related_name="predictions"
    )
    probabilities = models.JSONField()  # 14 calibrated probabilities in taxonomy order
    top_code = models.CharField(max_length=2)
    confidence = models.FloatField()  # calibrated max probability
    margin = models.FloatField()
    entropy = models.FloatField()
    # The pooled feature vector as float16 bytes (4 KiB for 2,048-d); see docs/scaling.md.
    features = models.BinaryField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["cell", "model_version"], name="one_prediction_per_cell_and_model"
            )
        ]
        indexes = [models.Index(fields=["model_version", "confidence"])]


class RoutingConfig(models.Model):
    """The review-queue rules admins may change; one row. New items use the new values."""

    confidence_threshold = models.FloatField(default=0.8)
    weak_class_tpr = models.FloatField(default=0.9)
    audit_rate = models.FloatField(default=0.02)
    strategy = models.CharField(max_length=32, default="default")
    lease_seconds = models.PositiveIntegerField(default=600)
    retrain_min_new_labels = models.PositiveIntegerField(default=200)
    # Retrain as soon as this many new hematologist labels exist since the last training
    # job was opened (0: off; only the scheduled rule retrains).
    retrain_every_labels = models.PositiveIntegerField(default=0)
    # Independent reads for cells predicted as an abnormal class (the case's own setting
    # applies when higher).
    labels_required_abnormal = models.PositiveSmallIntegerField(default=1)
    # Share of the cells handed to a hematologist that are gold cells (annotation/gold).
    gold_rate = models.FloatField(default=0.05)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    updated_at = models.DateTimeField(auto_now=True)


class ReviewItem(models.Model):
    """A cell that needs a person, why, and who holds it right now."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        LEASED = "leased", "Leased"
        ADJUDICATION = "adjudication", "Awaiting adjudication"
        DONE = "done", "Done"
        CANCELLED = "cancelled", "Cancelled"

    cell = models.ForeignKey(CellImage, on_delete=models.CASCADE, related_name="review_items")
    labels_required = models.PositiveSmallIntegerField(default=1)
    reasons = models.JSONField(default=list)
    priority = models.FloatField(default=0.0, db_index=True)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    model_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL
    )
    leased_to = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    label = models.ForeignKey(Label, null=True, blank=True, on_delete=models.SET_NULL)
    flagged = models.BooleanField(default=False)
    # A gold cell mixed into one reader's queue; never shown to the reader (reasons look
    # like an ordinary item's). Its read is scored, not used as the cell's label.
    is_gold = models.BooleanField(default=False, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        permissions = [
            ("work_queue", "Can take and submit review items"),
            ("adjudicate", "Can settle disagreements between independent labels"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["cell"],
                condition=Q(status__in=["queued", "leased", "adjudication"]),
                name="one_open_review_item_per_cell",
            )
        ]
        indexes = [models.Index(fields=["status", "-priority", "id"])]


class ReviewSkip(models.Model):
    item = models.ForeignKey(ReviewItem, on_delete=models.CASCADE, related_name="skips")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    created_at = models.DateTimeField(auto_now_add=True)


class TrainingJob(models.Model):
    class Trigger(models.TextChoices):
        SCHEDULE = "schedule", "Schedule"
        ADMIN = "admin", "Admin"
        API = "api", "API"
        LABELS = "labels", "After N labels"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    trigger = models.CharField(max_length=16, choices=Trigger.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    progress = models.JSONField(default=dict, blank=True)  # stage, epoch, percent
    log_tail = models.TextField(blank=True, default="")
    error = models.TextField(blank=True, default="")
    params = models.JSONField(default=dict, blank=True)
    result_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    celery_task_id = models.CharField(max_length=64, blank=True, default="")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    # The training lock: True while the job is queued or running, NULL once it ends.
    # Unique, so a second open job cannot exist in any process; a job whose worker died
    # is failed by the watchdog (heartbeat), which releases the lock.
    lock = models.BooleanField(null=True, default=True, unique=True, editable=False)

    class Meta:
        ordering = ["-created_at"]


class ExportJob(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    format = models.CharField(max_length=16)
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    progress = models.JSONField(default=dict, blank=True)
    file = models.FileField(upload_to="exports/", max_length=255, blank=True)
    n_cells = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, default="")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]


class EvaluationSet(models.Model):
    """The fixed validation cells every model version is judged on, so a candidate and the
    active version are always compared on the same cells. Frozen once created; never
    used for training."""

    name = models.CharField(max_length=64, unique=True)
    cell_ids = models.JSONField(default=list)
    counts = models.JSONField(default=dict, blank=True)  # per class at creation
    created_at = models.DateTimeField(auto_now_add=True)
