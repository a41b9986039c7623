"""Gold cells: marking and retiring them, and mixing them into hematologists' queues.

A gold cell is an expert-verified cell. It is handed, unannounced, to each hematologist
at ``RoutingConfig.gold_rate`` of the cells they take from the queue (never the same
gold cell twice to one person), and every model version scores it, so one set of cells
measures both readers and models (annotation/selectors/gold.py). See "Gold cells" in
annotation/review_queue.md.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from annotation.errors import ApplicationError, get_or_404
from annotation.models import (
    CellImage,
    GoldCell,
    GoldCheck,
    ModelVersion,
    Prediction,
    ReviewItem,
    RoutingConfig,
)
from annotation.rules import AUDIT, route_reasons, weak_classes
from annotation.selectors.routing import routing_config_get
from annotation.services.audit import audit_event_create, fields_state
from annotation.services.events import queue_changed_on_commit
from annotation.services.labels import valid_code
from annotation.services.pipeline import gold_cell_enqueue_scoring
from annotation.types import UserLike

# The draws that decide which handed-out cells are gold. Seed it (gold_rng_seed) for a
# reproducible test; in production it is seeded from the OS.
_rng = random.Random()

_OPEN = [ReviewItem.Status.QUEUED, ReviewItem.Status.LEASED, ReviewItem.Status.ADJUDICATION]


def gold_rng_seed(*, seed: int) -> None:
    _rng.seed(seed)


# What the audit events of marking and retiring record.
_AUDITED = ("diff14", "note", "marked_by", "marked_at", "retired_at")


def gold_cell_mark(*, user: UserLike | None, cell_id: int, diff14: str, note: str = "") -> GoldCell:
    """Make a cell a gold cell with the expert's class. A retired gold cell may be marked
    again (with a new class); an active one must be retired first, so a change of the
    reference class is always two audited steps. The active and candidate model versions
    are asked to score the cell (after commit)."""
    code = valid_code(diff14, field="diff14")
    with transaction.atomic():
        # The cell row is the lock: two admins marking the same cell at once serialise.
        cell = get_or_404(CellImage.objects.select_for_update(), what="Cell", pk=cell_id)
        gold = GoldCell.objects.filter(cell=cell).select_related("marked_by").first()
        if gold is not None and gold.retired_at is None:
            by = gold.marked_by.get_username() if gold.marked_by else "an import"
            raise ApplicationError(
                f"Cell {cell_id} is already a gold cell ({gold.diff14}, marked by {by} on "
                f"{gold.marked_at:%Y-%m-%d}); retire it first to change its class.",
                code="already_gold",
                fields={"cell": "already a gold cell"},
            )
        before = fields_state(gold, _AUDITED) if gold is not None else None
        if gold is None:
            gold = GoldCell(cell=cell)
        gold.diff14 = code
        gold.note = note
        gold.marked_by = user
        gold.marked_at = timezone.now()
        gold.retired_at = None
        gold.save()
        audit_event_create(
            actor=user,
            action="gold.mark",
            target_type="cell",
            target_id=cell.pk,
            before=before,
            after=fields_state(gold, _AUDITED),
        )
        gold_cell_enqueue_scoring(cell_id=cell.pk)
    return gold


def gold_cell_retire(*, user: UserLike | None, cell_id: int) -> GoldCell:
    """Stop using a gold cell: no longer handed out, and its checks and predictions no
    longer count in the performance figures. The row and the reads stay for the record."""
    with transaction.atomic():
        gold = (
            GoldCell.objects.select_for_update()
            .filter(cell_id=cell_id, retired_at__isnull=True)
            .first()
        )
        if gold is None:
            raise ApplicationError(
                f"Cell {cell_id} is not an active gold cell.", code="not_found", status=404
            )
        before = fields_state(gold, _AUDITED)
        gold.retired_at = timezone.now()
        gold.save(update_fields=["retired_at"])
        audit_event_create(
            actor=user,
            action="gold.retire",
            target_type="cell",
            target_id=cell_id,
            before=before,
            after=fields_state(gold, _AUDITED),
        )
    return gold


def gold_item_return(item: ReviewItem, *, now: datetime) -> bool:
    """Where a leased item would go back to the queue: a gold item is cancelled instead
    (it was meant for one reader only) and True is returned; the caller saves it."""
    if not item.is_gold:
        return False
    item.status = ReviewItem.Status.CANCELLED
    item.closed_at = now
    item.leased_to = None
    item.lease_expires_at = None
    return True


def gold_items_mix(
    *,
    user: UserLike,
    count: int,
    now: datetime,
    lease: timedelta,
    config: RoutingConfig | None = None,
) -> list[ReviewItem]:
    """Called by ``review_items_next`` inside its transaction, before it reads the user's
    leases: each of the ``count`` cells about to be handed out is, with probability
    ``gold_rate``, a gold cell instead, leased to the user here so the ordinary lease
    query returns it. Only into slots the user's live leases leave free, only while the
    queue holds ordinary work for them (an empty queue never produces a cell), and only
    gold cells they have never been given, read or marked.

    Gold items are never shared: one that would go back to the queue (released, skipped,
    lease expired) is cancelled instead (``gold_item_return``), so no ordinary query can
    take it.
    """
    config = config or routing_config_get()
    if config.gold_rate <= 0:
        return []
    hits = [_rng.random() < config.gold_rate for _ in range(count)]
    if not any(hits):
        return []
    held = ReviewItem.objects.filter(status=ReviewItem.Status.LEASED, leased_to=user).count()
    wanted = sum(hits[: max(0, count - held)])
    if not wanted:
        return []
    ordinary_work = (
        ReviewItem.objects.filter(status=ReviewItem.Status.QUEUED, is_gold=False)
        .exclude(skips__user=user)
        .exclude(reads__annotator=user)
        .exists()
    )
    version = ModelVersion.objects.active()
    if not ordinary_work or version is None:
        return []
    candidates = list(
        GoldCell.objects.filter(retired_at__isnull=True, cell__predictions__model_version=version)
        .exclude(checks__user=user)
        .exclude(cell__labels__annotator=user)
        .exclude(marked_by=user)
        .exclude(cell__review_items__status__in=_OPEN)
        .values_list("id", flat=True)
    )
    chosen = _rng.sample(candidates, min(wanted, len(candidates)))
    golds = GoldCell.objects.filter(pk__in=chosen).order_by("id")
    predictions = {
        p.cell_id: p
        for p in Prediction.objects.filter(model_version=version, cell__gold__in=chosen).defer(
            "features"
        )
    }
    weak = weak_classes(version, config.weak_class_tpr)
    items = []
    for gold in golds:
        prediction = predictions[gold.cell_id]
        # The reasons an ordinary item for this prediction would carry, so nothing in
        # the item tells the reader it is gold; a confident cell gets the audit reason.
        reasons = route_reasons(
            prediction=prediction, config=config, weak=weak, has_conflict=False
        ) or [AUDIT]
        try:
            with transaction.atomic():  # a savepoint: a lost race skips this cell only
                item = ReviewItem.objects.create(
                    cell_id=gold.cell_id,
                    is_gold=True,
                    reasons=reasons,
                    priority=round(_rng.random(), 6),
                    status=ReviewItem.Status.LEASED,
                    model_version=version,
                    leased_to=user,
                    lease_expires_at=now + lease,
                    labels_required=1,
                )
                GoldCheck.objects.create(gold=gold, user=user, item=item)
        except IntegrityError:
            continue  # someone else opened an item for the cell, or a parallel request
        items.append(item)
    if items:
        queue_changed_on_commit()
    return items
