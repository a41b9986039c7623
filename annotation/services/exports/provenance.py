"""Provenance of an exported cell: its current label, who gave it when, and what the
model suggested at that time.

The suggestion is the prediction of the model version that queued the review item the
label closed, otherwise the newest prediction made before the label; for an unlabelled
cell, the active model's prediction.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch, QuerySet

from annotation.models import CellImage, Label, ModelVersion, Prediction, ReviewItem, Segmentation

PROVENANCE_COLUMNS = [
    "cell_id",
    "sha256",
    "case_accession",
    "case_diagnosis",
    "width",
    "height",
    "original_filename",
    "image_path",
    "has_label_conflict",
    "label_id",
    "label_source",
    "annotator",
    "labelled_at",
    "supersedes_label_id",
    "model_version",
    "model_suggestion",
    "model_confidence",
]


def cells_with_provenance(qs: QuerySet[CellImage], *, masks: bool) -> QuerySet[CellImage]:
    """``qs`` with everything ``provenance_row`` reads prefetched (a fixed number of
    queries per chunk, not per cell); with ``masks``, each cell's usable segmentations
    too, newest first."""
    prefetches: list[Any] = [
        Prefetch(
            "predictions",
            queryset=Prediction.objects.select_related("model_version")
            .only(
                "id",
                "cell_id",
                "top_code",
                "confidence",
                "created_at",
                "model_version__id",
                "model_version__name",
                "model_version__status",
            )
            .order_by("created_at", "id"),
        ),
        Prefetch(
            "review_items",
            queryset=ReviewItem.objects.filter(label__isnull=False).only(
                "id", "cell_id", "label_id", "model_version_id"
            ),
        ),
    ]
    if masks:
        prefetches.append(
            Prefetch(
                "segmentations",
                queryset=Segmentation.objects.filter(status="ok")
                .exclude(mask="")
                .order_by("-created_at", "-id"),
            )
        )
    return qs.select_related("case", "current_label__annotator").prefetch_related(*prefetches)


def _suggestion(cell: CellImage, label: Label | None) -> Prediction | None:
    # Reads only the prefetched predictions and review items: no query per cell.
    predictions: list[Prediction] = list(cell.predictions.all())
    if label is None:
        return next(
            (p for p in predictions if p.model_version.status == ModelVersion.Status.ACTIVE),
            None,
        )
    item = next((i for i in cell.review_items.all() if i.label_id == label.pk), None)
    if item is not None and item.model_version_id is not None:
        found = next((p for p in predictions if p.model_version_id == item.model_version_id), None)
        if found is not None:
            return found
    before = [p for p in predictions if p.created_at <= label.created_at]
    return before[-1] if before else None


def provenance_row(cell: CellImage) -> dict[str, Any]:
    """The provenance columns of one cell (from ``cells_with_provenance``), as written to
    the CSV files and the COCO attributes."""
    label = cell.current_label
    suggestion = _suggestion(cell, label)
    return {
        "cell_id": cell.pk,
        "sha256": cell.sha256,
        "case_accession": cell.case.accession_id,
        "case_diagnosis": cell.case.diagnosis,
        "width": cell.width,
        "height": cell.height,
        "original_filename": cell.original_filename,
        "image_path": cell.image.name,
        "has_label_conflict": int(cell.has_label_conflict),
        "label_id": label.pk if label else "",
        "label_source": label.source if label else "",
        "annotator": label.annotator.username if label and label.annotator else "",
        "labelled_at": label.created_at.isoformat() if label else "",
        "supersedes_label_id": (label.supersedes_id or "") if label else "",
        "model_version": suggestion.model_version.name if suggestion else "",
        "model_suggestion": suggestion.top_code if suggestion else "",
        "model_confidence": round(suggestion.confidence, 6) if suggestion else "",
    }
