from __future__ import annotations

import logging

from django.db import transaction

from annotation.errors import ApplicationError, get_or_404
from annotation.models import CellImage, Label, ReviewItem
from annotation.services.audit import audit_event_create
from annotation.types import UserLike
from mlworker.taxonomy import CODES

logger = logging.getLogger(__name__)


def _label_state(label: Label | None) -> dict[str, object] | None:
    if label is None:
        return None
    return {
        "label_id": label.pk,
        "code": label.code,
        "source": label.source,
        "annotator": label.annotator_id,
    }


def _case_label_landed(*, case_id: int, user: UserLike | None) -> None:
    """A signed case takes no new labels; a new one is now in review (services/cases.py)."""
    from annotation.services.cases import case_label_landed

    case_label_landed(case_id=case_id, user=user)


def _retrain_after_labels_on_commit() -> None:
    """Once the label is committed, let the label-count rule decide whether to retrain
    (annotation/services/training/schedule.py; off unless an admin set N)."""

    def check() -> None:
        from annotation.services.training import retrain_after_labels

        try:
            retrain_after_labels()
        except Exception:  # the label is stored; a failed check must not fail the request
            logger.exception("retraining after labels: check failed")

    transaction.on_commit(check)


def valid_code(code: str, *, field: str = "code") -> str:
    """The code in upper case; an unknown one is refused, naming the input ``field``."""
    code = code.strip().upper()
    if code not in CODES:
        raise ApplicationError(
            f"Unknown 14-Diff class {code!r}; use one of {', '.join(CODES)}.",
            code="unknown_class",
            fields={field: "not a 14-Diff code"},
        )
    return code


def _close_open_review_items(*, cell_id: int, label: Label, annotator: UserLike | None) -> None:
    """A person has decided the cell (from the queue or from case review): its queued
    item, or one leased to that same person, is done. An item someone else holds stays
    theirs; their submit will supersede this label."""
    from django.db.models import Q
    from django.utils import timezone

    from annotation.models import ReviewItem
    from annotation.services.events import queue_changed_on_commit

    closed = (
        ReviewItem.objects.filter(cell_id=cell_id)
        .filter(
            Q(status=ReviewItem.Status.QUEUED)
            | Q(status=ReviewItem.Status.LEASED, leased_to=annotator)
        )
        .update(
            status=ReviewItem.Status.DONE,
            label=label,
            closed_at=timezone.now(),
            lease_expires_at=None,
        )
    )
    if closed:
        queue_changed_on_commit()


def cell_label_create(
    *,
    cell_id: int,
    code: str,
    annotator: UserLike | None,
    source: str = Label.Source.HEMATOLOGIST,
) -> Label:
    """Give a cell a new 14-Diff label, superseding its current one.

    Labels are never edited: the new row points at the one it replaces and the audit trail
    records both. The cell row is locked so two people labelling the same cell at once
    produce a chain (A superseded by B), never two labels that both claim to be current.
    """
    code = valid_code(code)
    if source != Label.Source.IMPORTED and annotator is None:
        raise ApplicationError("A label given by a person must name the person.")
    with transaction.atomic():
        cell = get_or_404(CellImage.objects.select_for_update(), what="Cell", pk=cell_id)
        if source != Label.Source.IMPORTED:
            _case_label_landed(case_id=cell.case_id, user=annotator)
        previous = (
            Label.objects.select_related(None).get(pk=cell.current_label_id)
            if cell.current_label_id
            else None
        )
        label = Label.objects.create(
            cell=cell, code=code, annotator=annotator, source=source, supersedes=previous
        )
        cell.current_label = label
        if source != Label.Source.IMPORTED:
            # A person's decision settles a disagreement between the imported sources.
            cell.has_label_conflict = False
        cell.save(update_fields=["current_label", "has_label_conflict"])
        if source != Label.Source.IMPORTED:
            _close_open_review_items(cell_id=cell.pk, label=label, annotator=annotator)
        if source == Label.Source.HEMATOLOGIST:
            _retrain_after_labels_on_commit()
        audit_event_create(
            actor=annotator,
            action="label.supersede" if previous else "label.create",
            target_type="cell",
            target_id=cell.pk,
            before=_label_state(previous),
            after=_label_state(label),
        )
    return label


def cell_label_read_create(*, item: ReviewItem, code: str, annotator: UserLike) -> Label:
    """One independent read of a double-read item. It does not become the cell's label
    by itself; nobody sees it before giving their own read."""
    code = valid_code(code)
    _case_label_landed(case_id=item.cell.case_id, user=annotator)
    label = Label.objects.create(
        cell_id=item.cell_id,
        code=code,
        annotator=annotator,
        source=Label.Source.HEMATOLOGIST,
        review_item=item,
    )
    _retrain_after_labels_on_commit()
    audit_event_create(
        actor=annotator,
        action="label.read",
        target_type="cell",
        target_id=item.cell_id,
        after=_label_state(label),
    )
    return label


def cell_reads_resolve(*, item: ReviewItem) -> Label | None:
    """All reads of the item agree: the latest read becomes the cell's label (returned).
    They disagree: the cell is marked conflicting and None is returned."""
    reads = list(item.reads.order_by("id"))
    cell = CellImage.objects.select_for_update().get(pk=item.cell_id)
    codes = {read.code for read in reads}
    if len(codes) == 1:
        agreed = reads[-1]
        before = cell.current_label_id
        cell.current_label = agreed
        cell.has_label_conflict = False
        cell.save(update_fields=["current_label", "has_label_conflict"])
        audit_event_create(
            actor=None,
            action="label.agreed",
            target_type="cell",
            target_id=cell.pk,
            before={"label_id": before},
            after={"label_id": agreed.pk, "code": agreed.code, "reads": [r.pk for r in reads]},
        )
        return agreed
    cell.has_label_conflict = True
    cell.save(update_fields=["has_label_conflict"])
    audit_event_create(
        actor=None,
        action="label.disagreement",
        target_type="cell",
        target_id=cell.pk,
        after={
            "reads": [
                {"label_id": r.pk, "code": r.code, "annotator": r.annotator_id} for r in reads
            ]
        },
    )
    return None


def cell_label_gold_read_create(*, item: ReviewItem, code: str, annotator: UserLike) -> Label:
    """A reader's answer on a gold cell mixed into their queue (annotation/services/gold.py):
    an independent read of the item, scored against the gold class. It never becomes the
    cell's label and never opens a disagreement; the item is done."""
    from django.utils import timezone

    label = cell_label_read_create(item=item, code=code, annotator=annotator)
    item.status = ReviewItem.Status.DONE
    item.label = label
    item.closed_at = timezone.now()
    item.lease_expires_at = None
    item.save(update_fields=["status", "label", "closed_at", "lease_expires_at"])
    return label
