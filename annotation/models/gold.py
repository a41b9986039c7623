"""Gold cells: expert-verified reference cells that measure both readers and models.
See "Gold cells" in annotation/review_queue.md."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from annotation.models.core import DIFF14_CHOICES, CellImage
from annotation.models.pipeline import ReviewItem
from mlworker.taxonomy import CODES


class GoldCell(models.Model):
    """A cell whose class an expert has verified. Active while ``retired_at`` is null;
    retiring keeps the row (and the checks made against it) for the record."""

    cell = models.OneToOneField(CellImage, on_delete=models.PROTECT, related_name="gold")
    # The expert reference class; reads and predictions are scored against it.
    diff14 = models.CharField(max_length=2, choices=DIFF14_CHOICES)
    note = models.TextField(blank=True, default="")
    marked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    marked_at = models.DateTimeField()
    retired_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["-marked_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(diff14__in=list(CODES)), name="gold_cell_diff14_is_a_14diff_code"
            )
        ]

    def __str__(self) -> str:
        return f"gold {self.diff14} on cell {self.cell_id}"


class GoldCheck(models.Model):
    """One gold cell handed to one reader through the review queue. Unique per (gold
    cell, reader), so nobody gets the same gold cell twice, even if they released or
    skipped it, or two requests raced."""

    gold = models.ForeignKey(GoldCell, on_delete=models.PROTECT, related_name="checks")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    item = models.OneToOneField(ReviewItem, on_delete=models.PROTECT, related_name="gold_check")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["gold", "user"], name="one_gold_check_per_reader")
        ]
