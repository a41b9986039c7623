from __future__ import annotations

from collections import Counter
from typing import Any

from django.db import connection
from django.db.models import Count, F

from annotation.models import Prediction, ReviewItem

OPEN = [ReviewItem.Status.QUEUED, ReviewItem.Status.LEASED]


def _count_reasons() -> dict[str, int]:
    """Open items per reason (an item counts once per reason it has)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT reason, count(*) FROM annotation_reviewitem, "
                "jsonb_array_elements_text(reasons) AS reason "
                "WHERE status IN ('queued', 'leased') GROUP BY reason"
            )
            return {reason: n for reason, n in cursor.fetchall()}
    counter: Counter[str] = Counter()
    for reasons in ReviewItem.objects.filter(status__in=OPEN).values_list("reasons", flat=True):
        counter.update(reasons)
    return dict(counter)


def review_queue_counts() -> dict[str, Any]:
    """Open items by status, by reason (an item counts once per reason) and by the
    predicted class of the model that queued it."""
    by_status = dict(
        ReviewItem.objects.filter(status__in=OPEN).values_list("status").annotate(n=Count("id"))
    )
    by_reason = _count_reasons()
    by_class = dict(
        Prediction.objects.filter(
            cell__review_items__status__in=OPEN,
            model_version_id=F("cell__review_items__model_version_id"),
        )
        .values_list("top_code")
        .annotate(n=Count("id"))
    )
    return {
        "queued": by_status.get(ReviewItem.Status.QUEUED, 0),
        "leased": by_status.get(ReviewItem.Status.LEASED, 0),
        "by_reason": by_reason,
        "by_class": dict(by_class),
    }
