"""Which cells an export holds: the filters a client gives and the query they make."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from django.db.models import Q, QuerySet

from annotation.models import CellImage

LABEL_STATUSES = ("labelled", "unlabelled", "any")


@dataclass(frozen=True)
class ExportFilters:
    """The filters of one export. A job stores them as JSON params (``as_params``) and its
    task reads them back (``from_params``), so both must round-trip every field."""

    case_id: int | None = None
    label: str | None = None
    label_source: str | None = None
    label_status: str = "labelled"
    since: datetime | None = None

    def as_params(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None}
        if self.since is not None:
            out["since"] = self.since.isoformat()
        return out

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ExportFilters:
        since = params.get("since")
        return cls(
            case_id=params.get("case_id"),
            label=params.get("label"),
            label_source=params.get("label_source"),
            label_status=params.get("label_status", "labelled"),
            since=datetime.fromisoformat(since) if since else None,
        )


def export_cells(*, filters: ExportFilters) -> QuerySet[CellImage]:
    """The cells the filters choose, in id order (so two exports list them alike).

    A class or a label source implies labelled cells; ``since`` means the label's time
    for labelled cells and the import time for unlabelled ones.
    """
    qs = CellImage.objects.all()
    f = filters
    if f.case_id is not None:
        qs = qs.filter(case_id=f.case_id)
    if f.label_status == "labelled" or f.label or f.label_source:
        qs = qs.filter(current_label__isnull=False)
    elif f.label_status == "unlabelled":
        qs = qs.filter(current_label__isnull=True)
    if f.label:
        qs = qs.filter(current_label__code=f.label)
    if f.label_source:
        qs = qs.filter(current_label__source=f.label_source)
    if f.since is not None:
        qs = qs.filter(
            Q(current_label__created_at__gte=f.since)
            | Q(current_label__isnull=True, created_at__gte=f.since)
        )
    return qs.order_by("id")


def export_count(*, filters: ExportFilters) -> int:
    """How many cells the export would hold: decides between streaming and a job."""
    return export_cells(filters=filters).count()
