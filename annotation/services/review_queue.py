"""Handing queued cells to hematologists: leases, submit, skip, release, flag.

A lease gives one item to one person until it expires. ``review_item_next`` takes the
best queued item with ``SELECT ... FOR UPDATE SKIP LOCKED``, so concurrent requests
never receive the same item: each transaction skips rows another one is taking.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from annotation.errors import ApplicationError
from annotation.models import Label, ReviewItem, ReviewSkip
from annotation.services.audit import audit_event_create
from annotation.services.events import queue_changed
from annotation.services.gold import gold_items_mix
from annotation.services.labels import cell_label_create, cell_label_gold_read_create
from annotation.services.routing import routing_config_get
from annotation.types import UserLike


def review_leases_expire() -> int:
    """Return expired leases to the queue; returns how many."""
    expired = ReviewItem.objects.filter(
        status=ReviewItem.Status.LEASED, lease_expires_at__lt=timezone.now()
    ).update(status=ReviewItem.Status.QUEUED, leased_to=None, lease_expires_at=None)
    if expired:
        transaction.on_commit(queue_changed)
    return expired


def _queued_items_take(
    *, user: UserLike, count: int, exclude: list[int] | None = None
) -> list[ReviewItem]:
    """The best ``count`` queued items this user may read, locked (rows other requests
    are taking are skipped, so two requests never get the same item)."""
    if count <= 0:
        return []
    skipped = ReviewSkip.objects.filter(item=OuterRef("pk"), user=user)
    # Double reading: nobody reads the same cell twice.
    read = Label.objects.filter(review_item=OuterRef("pk"), annotator=user)
    return list(
        ReviewItem.objects.select_for_update(skip_locked=True, of=("self",))
        .filter(status=ReviewItem.Status.QUEUED)
        .filter(~Exists(skipped), ~Exists(read))
        .exclude(pk__in=exclude or [])
        .order_by("-priority", "id")[:count]
    )


def review_items_next(*, user: UserLike, count: int = 1) -> list[ReviewItem]:
    """Up to ``count`` leases for the user: their live leases first (renewed), then the
    highest-priority queued items they have not skipped. Several at once let the browser
    prefetch the next cells. Empty when the queue has nothing for them."""
    if not 1 <= count <= 10:
        raise ApplicationError(
            f"count must be from 1 to 10, got {count}.", fields={"count": "from 1 to 10"}
        )
    config = routing_config_get()
    lease = timedelta(seconds=config.lease_seconds)
    now = timezone.now()
    with transaction.atomic():
        gold_items_mix(user=user, count=count, now=now, lease=lease, config=config)
        mine = list(
            ReviewItem.objects.select_for_update(skip_locked=True)
            .filter(status=ReviewItem.Status.LEASED, leased_to=user)
            .order_by("id")[:count]
        )
        new = _queued_items_take(user=user, count=count - len(mine))
        if len(mine) + len(new) < count and review_leases_expire():
            # Expired leases go back to the queue here only when the queue runs short
            # (and every minute in housekeeping), not on every request: an UPDATE over
            # the leased items per 'next' was a good part of its cost under load.
            new += _queued_items_take(
                user=user, count=count - len(mine) - len(new), exclude=[i.pk for i in new]
            )
        for item in (*mine, *new):
            item.status = ReviewItem.Status.LEASED
            item.leased_to = user
            item.lease_expires_at = now + lease
        ReviewItem.objects.bulk_update([*mine, *new], ["status", "leased_to", "lease_expires_at"])
        if new:
            transaction.on_commit(queue_changed)
    return [*mine, *new]


def review_item_next(*, user: UserLike) -> ReviewItem | None:
    """The user's current lease (renewed), else the best queued item, leased to them."""
    items = review_items_next(user=user, count=1)
    return items[0] if items else None


def _locked_item_of(item_id: int, user: UserLike) -> ReviewItem:
    try:
        item = ReviewItem.objects.select_for_update().get(pk=item_id)
    except ReviewItem.DoesNotExist:
        raise ApplicationError(
            f"Review item {item_id} does not exist.", code="not_found", status=404
        ) from None
    if item.status != ReviewItem.Status.LEASED or item.leased_to_id != user.pk:
        holder = "nobody" if item.leased_to_id is None else "someone else"
        raise ApplicationError(
            f"Review item {item_id} is {item.status} and leased to {holder}; take a new "
            "cell with 'next' (your lease may have expired).",
            code="lease_lost",
            status=409,
        )
    return item


def review_item_submit(*, item_id: int, user: UserLike, code: str) -> Label:
    """Label the leased cell. Accepted after the lease time as long as nobody else has
    taken the item since.

    One read needed: the label is the cell's label and the item is done. Several needed
    (double reading): the label is kept as an independent read and the item goes back to
    the queue for someone who has not read it; when enough people have read it, agreeing
    reads become the cell's label and disagreeing ones go to adjudication.
    """
    with transaction.atomic():
        item = _locked_item_of(item_id, user)
        if item.is_gold:
            label = cell_label_gold_read_create(item=item, code=code, annotator=user)
        elif item.labels_required <= 1:
            label = cell_label_create(cell_id=item.cell_id, code=code, annotator=user)
            item.status = ReviewItem.Status.DONE
            item.label = label
            item.closed_at = timezone.now()
            item.lease_expires_at = None
            item.save(update_fields=["status", "label", "closed_at", "lease_expires_at"])
        else:
            label = _independent_read(item=item, user=user, code=code)
        transaction.on_commit(queue_changed)
    return label


def _independent_read(*, item: ReviewItem, user: UserLike, code: str) -> Label:
    from annotation.services.labels import cell_label_read_create, cell_reads_resolve

    label = cell_label_read_create(item=item, code=code, annotator=user)
    readers = set(item.reads.values_list("annotator_id", flat=True))
    item.leased_to = None
    item.lease_expires_at = None
    if len(readers) < item.labels_required:
        item.status = ReviewItem.Status.QUEUED
        item.save(update_fields=["status", "leased_to", "lease_expires_at"])
        return label
    agreed = cell_reads_resolve(item=item)
    if agreed is not None:
        item.status = ReviewItem.Status.DONE
        item.label = agreed
        item.closed_at = timezone.now()
        item.save(update_fields=["status", "label", "closed_at", "leased_to", "lease_expires_at"])
    else:
        item.status = ReviewItem.Status.ADJUDICATION
        if "disagreement" not in item.reasons:
            item.reasons = [*item.reasons, "disagreement"]
        item.save(update_fields=["status", "reasons", "leased_to", "lease_expires_at"])
    return label


def review_item_adjudicate(*, item_id: int, user: UserLike, code: str) -> Label:
    """A senior hematologist settles a disagreement: an adjudicated label that counts."""
    if not user.has_perm("annotation.adjudicate"):
        raise ApplicationError(
            "Only a senior hematologist (permission 'adjudicate') can settle disagreements.",
            code="permission_denied",
            status=403,
        )
    with transaction.atomic():
        try:
            item = ReviewItem.objects.select_for_update().get(pk=item_id)
        except ReviewItem.DoesNotExist:
            raise ApplicationError(
                f"Review item {item_id} does not exist.", code="not_found", status=404
            ) from None
        if item.status != ReviewItem.Status.ADJUDICATION:
            raise ApplicationError(
                f"Review item {item_id} is {item.status}, not awaiting adjudication.",
                code="not_in_adjudication",
                status=409,
            )
        label = cell_label_create(
            cell_id=item.cell_id, code=code, annotator=user, source=Label.Source.ADJUDICATED
        )
        item.status = ReviewItem.Status.DONE
        item.label = label
        item.closed_at = timezone.now()
        item.save(update_fields=["status", "label", "closed_at"])
        transaction.on_commit(queue_changed)
    return label


def review_item_skip(*, item_id: int, user: UserLike) -> None:
    """Back to the queue for others; this user does not get it again."""
    with transaction.atomic():
        item = _locked_item_of(item_id, user)
        ReviewSkip.objects.create(item=item, user=user)
        item.status = ReviewItem.Status.QUEUED
        item.leased_to = None
        item.lease_expires_at = None
        item.save(update_fields=["status", "leased_to", "lease_expires_at"])
        audit_event_create(
            actor=user, action="review.skip", target_type="review_item", target_id=item.pk
        )
        transaction.on_commit(queue_changed)


def review_item_release(*, item_id: int, user: UserLike) -> None:
    """Give the item back unlabelled (e.g. leaving the screen); anyone may take it."""
    with transaction.atomic():
        item = _locked_item_of(item_id, user)
        item.status = ReviewItem.Status.QUEUED
        item.leased_to = None
        item.lease_expires_at = None
        item.save(update_fields=["status", "leased_to", "lease_expires_at"])
        transaction.on_commit(queue_changed)


def review_item_flag(*, item_id: int, user: UserLike, flagged: bool = True) -> ReviewItem:
    """Mark the cell for discussion; the lease stays."""
    with transaction.atomic():
        item = _locked_item_of(item_id, user)
        item.flagged = flagged
        item.save(update_fields=["flagged"])
        audit_event_create(
            actor=user,
            action="review.flag" if flagged else "review.unflag",
            target_type="review_item",
            target_id=item.pk,
            after={"flagged": flagged},
        )
    return item
