"""Reading cells: the filtered list, one cell with everything known about it, history."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Exists, OuterRef, Prefetch, Q, QuerySet, TextField
from django.db.models.functions import Cast

from annotation.errors import get_or_404
from annotation.models import CellImage, Label, Prediction, ReviewItem, Segmentation
from annotation.selectors.visibility import (
    NOTHING,
    BlindedCells,
    cell_visibility_for,
    cells_blind,
    label_hidden_q,
    sources_hidden_q,
)
from annotation.types import UserLike

OPEN_ITEM_STATUSES = (ReviewItem.Status.QUEUED, ReviewItem.Status.LEASED)
LABEL_STATUSES = ("labelled", "unlabelled", "conflict")


@dataclass(frozen=True)
class CellFilters:
    case_id: int | None = None
    predicted: str | None = None  # the active model's top class
    label: str | None = None  # the current label's code
    label_status: str | None = None  # labelled | unlabelled | conflict
    label_source: str | None = None
    confidence_min: float | None = None  # the active model's confidence
    confidence_max: float | None = None
    queue_reason: str | None = None  # a reason of the cell's open review item


def _active_predictions() -> QuerySet[Prediction]:
    return (
        Prediction.objects.filter(model_version__status="active")
        .select_related("model_version")
        .defer("features", "model_version__metrics", "model_version__training_snapshot")
    )


def _cells(*, filters: CellFilters | None, user: UserLike | None) -> QuerySet[CellImage]:
    """The filtered cells with their prefetches. Label filters see what ``user`` sees: a
    cell whose label is hidden from them reads as unlabelled, so ``?label=NE`` cannot
    find a gold cell whose answer the row hides (annotation/selectors/visibility.py)."""
    f = filters or CellFilters()
    label_hidden = label_hidden_q(user=user)
    sources_hidden = sources_hidden_q(user=user)
    qs = CellImage.objects.select_related("case", "current_label__annotator").prefetch_related(
        Prefetch("predictions", queryset=_active_predictions(), to_attr="active_predictions"),
        Prefetch(
            "review_items",
            queryset=ReviewItem.objects.filter(status__in=OPEN_ITEM_STATUSES),
            to_attr="open_review_items",
        ),
    )
    if f.case_id is not None:
        qs = qs.filter(case_id=f.case_id)
    if f.label:
        qs = qs.filter(current_label__code=f.label)
    if f.label_source:
        qs = qs.filter(current_label__source=f.label_source)
    if label_hidden is not None and (f.label or f.label_source or f.label_status == "labelled"):
        qs = qs.exclude(label_hidden)
    if f.label_status == "labelled":
        qs = qs.filter(current_label__isnull=False)
    elif f.label_status == "unlabelled":
        unlabelled = Q(current_label__isnull=True)
        qs = qs.filter(unlabelled if label_hidden is None else unlabelled | label_hidden)
    elif f.label_status == "conflict":
        qs = qs.filter(has_label_conflict=True)
        if sources_hidden is not None:
            qs = qs.exclude(sources_hidden)
    if f.predicted or f.confidence_min is not None or f.confidence_max is not None:
        preds = Prediction.objects.filter(cell=OuterRef("pk"), model_version__status="active")
        if f.predicted:
            preds = preds.filter(top_code=f.predicted)
        if f.confidence_min is not None:
            preds = preds.filter(confidence__gte=f.confidence_min)
        if f.confidence_max is not None:
            preds = preds.filter(confidence__lte=f.confidence_max)
        qs = qs.filter(Exists(preds))
    if f.queue_reason:
        # Reasons are a JSON list; matching the quoted name in its text works on
        # PostgreSQL and on the embedded SQLite alike.
        items = ReviewItem.objects.annotate(reasons_text=Cast("reasons", TextField())).filter(
            cell=OuterRef("pk"),
            status__in=OPEN_ITEM_STATUSES,
            reasons_text__contains=f'"{f.queue_reason}"',
        )
        qs = qs.filter(Exists(items))
    return qs.order_by("id")


def cell_list(*, filters: CellFilters | None = None, user: UserLike | None = None) -> BlindedCells:
    """Cells in id order with their current label, the active model's prediction and the
    open review item prefetched, as ``user`` may see them: a fixed number of queries per
    page (one more for a reader, who is blinded on gold and independent-read cells)."""
    return BlindedCells(_cells(filters=filters, user=user), user=user)


def cell_get(*, cell_id: int, user: UserLike | None = None) -> CellImage:
    """One cell with its predictions (every model version), segmentations, labels and
    review items, each fetched once, as ``user`` may see it."""
    qs = CellImage.objects.select_related("case", "current_label__annotator").prefetch_related(
        Prefetch(
            "predictions",
            queryset=Prediction.objects.select_related("model_version")
            .defer("features", "model_version__metrics", "model_version__training_snapshot")
            .order_by("-model_version__created_at", "-id"),
        ),
        Prefetch("segmentations", queryset=Segmentation.objects.order_by("-created_at", "-id")),
        Prefetch(
            "labels",
            queryset=visible_labels().select_related("annotator").order_by("id"),
            to_attr="label_history",
        ),
        Prefetch(
            "review_items",
            queryset=ReviewItem.objects.order_by("-created_at", "-id"),
            to_attr="review_history",
        ),
    )
    cell = get_or_404(qs, what="Cell", pk=cell_id)
    history: list[ReviewItem] = cell.review_history  # type: ignore[attr-defined]
    open_items = [i for i in history if i.status in OPEN_ITEM_STATUSES]
    cell.open_review_items = open_items  # type: ignore[attr-defined]
    return cells_blind(cells=[cell], user=user)[0]


def cell_image_file_get(*, cell_id: int) -> CellImage:
    """Just the cell's image file name, for serving the image or its thumbnail."""
    return get_or_404(CellImage.objects.only("image"), what="Cell", pk=cell_id)


def visible_labels() -> QuerySet[Label]:
    """Labels anyone may see. Independent reads of a cell still being double-read (or
    awaiting adjudication) stay hidden, so no reader sees another's answer before giving
    their own; adjudicators see them through the adjudication queue. Gold reads (a
    reader's answer on a gold check) never show here: they are a reader's score, seen by
    admins in the gold panel, and would tell other readers which cells are gold."""
    return Label.objects.filter(
        Q(review_item__isnull=True)
        | Q(review_item__status__in=["done", "cancelled"], review_item__is_gold=False)
    )


def cell_label_history(*, cell_id: int, user: UserLike | None = None) -> QuerySet[Label]:
    """The cell's visible labels, oldest first; none while ``user`` is blinded on it."""
    get_or_404(CellImage.objects.only("pk"), what="Cell", pk=cell_id)
    if not cell_visibility_for(user=user, cell_ids=[cell_id]).get(cell_id, NOTHING).label:
        return Label.objects.none()
    return visible_labels().filter(cell_id=cell_id).select_related("annotator").order_by("id")


def segmentation_get(*, segmentation_id: int) -> Segmentation:
    return get_or_404(Segmentation, what="Segmentation", pk=segmentation_id)


def cell_ids_matching(*, filters: CellFilters) -> QuerySet[CellImage]:
    """The same filters without the prefetches, for counting and exporting (the system's
    view: exports go to admins and data scientists, who see every cell)."""
    return _cells(filters=filters, user=None).prefetch_related(None).select_related(None)


__all__ = [
    "LABEL_STATUSES",
    "CellFilters",
    "cell_get",
    "cell_ids_matching",
    "cell_image_file_get",
    "cell_label_history",
    "cell_list",
    "segmentation_get",
]


def cell_thumbnail_jpeg(*, cell: CellImage, size: int = 96) -> bytes:
    """A small JPEG of the cell, made on request (a 360 px crop resizes in ~2 ms)."""
    import io

    from PIL import Image

    with cell.image.open("rb") as fh, Image.open(fh) as original:
        small = original.convert("RGB")
        small.thumbnail((size, size))
        out = io.BytesIO()
        small.save(out, "JPEG", quality=85)
    return out.getvalue()
