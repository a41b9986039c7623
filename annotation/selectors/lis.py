"""Reading LIS deliveries: a case's, newest report first (docs/lis.md)."""

from __future__ import annotations

from django.db.models import QuerySet

from annotation.models import LisDelivery
from annotation.selectors.cases import case_get


def case_lis_deliveries(*, case_id: int) -> QuerySet[LisDelivery]:
    """Every delivery of every report version of the case (404 for an unknown case)."""
    case_get(case_id=case_id)
    return (
        LisDelivery.objects.filter(report__case_id=case_id)
        .select_related("report")
        .order_by("-report__version", "kind")
    )
