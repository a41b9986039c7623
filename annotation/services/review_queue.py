"""Handing queued cells to hematologists: leases, submit, skip, release, flag.

A lease gives one item to one person until it expires. ``review_item_next`` takes the
best queued item with ``SELECT ... FOR UPDATE SKIP LOCKED``, so concurrent requests
never receive the same item: each transaction skips rows another one is taking.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import connection, transaction
from django.utils import timezone

from annotation.errors import ApplicationError, get_or_404
from annotation.models import CellImage, Label, ReviewItem, ReviewSkip
from annotation.selectors.routing import routing_config_get
from annotation.services.audit import audit_event_create
from annotation.services.events import queue_changed_on_commit
from annotation.services.gold import gold_item_return, gold_items_mix
from annotation.services.labels import cell_label_create, cell_label_gold_read_create
from annotation.types import UserLike


def review_leases_expire() -> int:
    """Return expired leases to the queue; returns how many. Expired gold items are
    cancelled instead: a gold cell is meant for the one reader it was mixed in for."""
    now = timezone.now()
    expired_leases = ReviewItem.objects.filter(
        status=ReviewItem.Status.LEASED, lease_expires_at__lt=now
    )
    expired = expired_leases.filter(is_gold=True).update(
        status=ReviewItem.Status.CANCELLED, closed_at=now, leased_to=None, lease_expires_at=None
    )
    expired += expired_leases.update(
        status=ReviewItem.Status.QUEUED, leased_to=None, lease_expires_at=None
    )
    if expired:
        queue_changed_on_commit()
    return expired


# The two queries every 'next' runs are written in SQL: the ORM took about 2.3 ms of CPU
# to compile the queued-items query (two NOT EXISTS) and 0.7 ms the leases query, where
# PostgreSQL runs each in under 0.1 ms (benchmarks/bench_api.py; review_queue.md).
_TAKE_SQL = """
    SELECT r.* FROM {item} r
    WHERE r.status = %s
      AND NOT EXISTS (SELECT 1 FROM {skip} s WHERE s.item_id = r.id AND s.user_id = %s)
      AND NOT EXISTS (
        SELECT 1 FROM {label} l WHERE l.review_item_id = r.id AND l.annotator_id = %s
      )
      {exclude}{case}
    ORDER BY r.priority DESC, r.id
    LIMIT %s{lock}
"""
_MINE_SQL = """
    SELECT r.* FROM {item} r WHERE r.status = %s AND r.leased_to_id = %s{case}
    ORDER BY r.id LIMIT %s{lock}
"""
# ``case``: only the cells of one case ("review this case's open cells").
_CASE_SQL = " AND r.cell_id IN (SELECT c.id FROM {cell} c WHERE c.case_id = %s)"


def _lock_clause() -> str:
    """Row locks that skip rows other transactions hold (PostgreSQL); SQLite, the
    embedded default, has no row locks and serialises writers instead."""
    if connection.features.has_select_for_update_skip_locked:
        return " FOR UPDATE OF r SKIP LOCKED"
    return ""


def _tables() -> dict[str, str]:
    return {
        "item": ReviewItem._meta.db_table,
        "skip": ReviewSkip._meta.db_table,
        "label": Label._meta.db_table,
        "cell": CellImage._meta.db_table,
    }


def _case_clause(case_id: int | None) -> tuple[str, list[int]]:
    if case_id is None:
        return "", []
    return _CASE_SQL.format(**_tables()), [case_id]


def _queued_items_take(
    *, user: UserLike, count: int, exclude: list[int] | None = None, case_id: int | None = None
) -> list[ReviewItem]:
    """The best ``count`` queued items this user may read (not skipped by them and, for
    double reading, not read by them already), locked; rows other requests are taking
    are skipped, so two requests never get the same item."""
    if count <= 0:
        return []
    exclude = exclude or []
    case_sql, case_params = _case_clause(case_id)
    sql = _TAKE_SQL.format(
        **_tables(),
        exclude=f"AND r.id NOT IN ({', '.join(['%s'] * len(exclude))})" if exclude else "",
        case=case_sql,
        lock=_lock_clause(),
    )
    params = [ReviewItem.Status.QUEUED.value, user.pk, user.pk, *exclude, *case_params, count]
    return list(ReviewItem.objects.raw(sql, params))


def _own_leases_take(*, user: UserLike, count: int, case_id: int | None = None) -> list[ReviewItem]:
    """Up to ``count`` of the user's live leases, oldest first, locked."""
    case_sql, case_params = _case_clause(case_id)
    sql = _MINE_SQL.format(**_tables(), case=case_sql, lock=_lock_clause())
    return list(
        ReviewItem.objects.raw(sql, [ReviewItem.Status.LEASED.value, user.pk, *case_params, count])
    )


def review_items_next(
    *, user: UserLike, count: int = 1, case_id: int | None = None
) -> list[ReviewItem]:
    """Up to ``count`` leases for the user: their live leases first (renewed), then the
    highest-priority queued items they have not skipped. Several at once let the browser
    prefetch the next cells. Empty when the queue has nothing for them. With ``case_id``
    only that case's cells, and no gold cells mixed in (one from another case would
    give itself away)."""
    if not 1 <= count <= 10:
        raise ApplicationError(
            f"count must be from 1 to 10, got {count}.", fields={"count": "from 1 to 10"}
        )
    config = routing_config_get()
    lease = timedelta(seconds=config.lease_seconds)
    now = timezone.now()
    with transaction.atomic():
        if case_id is None:
            gold_items_mix(user=user, count=count, now=now, lease=lease, config=config)
        mine = _own_leases_take(user=user, count=count, case_id=case_id)
        new = _queued_items_take(user=user, count=count - len(mine), case_id=case_id)
        if len(mine) + len(new) < count and review_leases_expire():
            # Expired leases go back to the queue here only when the queue runs short
            # (and every minute in housekeeping), not on every request: an UPDATE over
            # the leased items per 'next' was a good part of its cost under load.
            new += _queued_items_take(
                user=user,
                count=count - len(mine) - len(new),
                exclude=[i.pk for i in new],
                case_id=case_id,
            )
        taken = [*mine, *new]
        for item in taken:
            item.status = ReviewItem.Status.LEASED
            item.leased_to = user
            item.lease_expires_at = now + lease
        if taken:  # one plain UPDATE: every item gets the same values
            ReviewItem.objects.filter(pk__in=[i.pk for i in taken]).update(
                status=ReviewItem.Status.LEASED, leased_to=user, lease_expires_at=now + lease
            )
        if new:
            queue_changed_on_commit()
    return [*mine, *new]


def review_item_next(*, user: UserLike) -> ReviewItem | None:
    """The user's current lease (renewed), else the best queued item, leased to them."""
    items = review_items_next(user=user, count=1)
    return items[0] if items else None


def _locked_item_of(item_id: int, user: UserLike) -> ReviewItem:
    item = get_or_404(ReviewItem.objects.select_for_update(), what="Review item", pk=item_id)
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
            # cell_label_create closes the cell's open item held by this user - this one
            # (status done, the label, closed_at) - in the same transaction.
            label = cell_label_create(cell_id=item.cell_id, code=code, annotator=user)
        else:
            label = _independent_read(item=item, user=user, code=code)
        queue_changed_on_commit()
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
        item = get_or_404(ReviewItem.objects.select_for_update(), what="Review item", pk=item_id)
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
        queue_changed_on_commit()
    return label


def _item_return(item: ReviewItem) -> None:
    """A leased item goes back to the queue for others (a gold item is cancelled)."""
    if not gold_item_return(item, now=timezone.now()):
        item.status = ReviewItem.Status.QUEUED
        item.leased_to = None
        item.lease_expires_at = None
    item.save(update_fields=["status", "leased_to", "lease_expires_at", "closed_at"])


def review_item_skip(*, item_id: int, user: UserLike) -> None:
    """Back to the queue for others; this user does not get it again."""
    with transaction.atomic():
        item = _locked_item_of(item_id, user)
        ReviewSkip.objects.create(item=item, user=user)
        _item_return(item)
        audit_event_create(
            actor=user, action="review.skip", target_type="review_item", target_id=item.pk
        )
        queue_changed_on_commit()


def review_item_release(*, item_id: int, user: UserLike) -> None:
    """Give the item back unlabelled (e.g. leaving the screen); anyone may take it."""
    with transaction.atomic():
        item = _locked_item_of(item_id, user)
        _item_return(item)
        queue_changed_on_commit()


def review_items_release(*, item_ids: list[int], user: UserLike) -> list[int]:
    """Give back, in one transaction, those of ``item_ids`` the user still holds; returns
    the ids released. Leaving the labelling screen gives back every prefetched lease at
    once: one write instead of one request per item, which on SQLite (the embedded
    default, one writer at a time) raced each other into "database is locked". Ids the
    user no longer holds (labelled meanwhile, expired, taken by someone else) are left
    alone rather than refused, so a retried call is harmless."""
    ids = sorted(set(item_ids))
    if not ids:
        return []
    with transaction.atomic():
        held = list(
            ReviewItem.objects.select_for_update()
            .filter(pk__in=ids, status=ReviewItem.Status.LEASED, leased_to_id=user.pk)
            .order_by("pk")
        )
        for item in held:
            _item_return(item)
        if held:
            queue_changed_on_commit()
    return [item.pk for item in held]


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
