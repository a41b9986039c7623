from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from annotation.models import Label, ReviewItem


def adjudication_queue() -> QuerySet[ReviewItem]:
    """Items whose independent reads disagree, oldest first, with every read and author."""
    return (
        ReviewItem.objects.filter(status=ReviewItem.Status.ADJUDICATION)
        .select_related("cell__case")
        .prefetch_related(
            Prefetch("reads", queryset=Label.objects.select_related("annotator").order_by("id"))
        )
        .order_by("id")
    )
