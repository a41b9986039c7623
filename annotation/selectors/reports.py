"""Reading what a case's review produced: its interpretive comment, the notes on its
cells, and its signed report versions (written by annotation/services/cases.py)."""

from __future__ import annotations

from typing import Any

from django.db.models import Exists, OuterRef, Q, QuerySet

from annotation.errors import get_or_404
from annotation.models import CaseInterpretation, CaseReport, CellImage, ReviewItem


def case_interpretation_get(*, case_id: int) -> dict[str, Any]:
    """The case's interpretive comment; empty when nobody has written one."""
    found = CaseInterpretation.objects.filter(case_id=case_id).select_related("updated_by").first()
    if found is None:
        return {"text": "", "coded": [], "updated_by": None, "updated_at": None}
    return {
        "text": found.text,
        "coded": found.coded,
        "updated_by": found.updated_by.get_username() if found.updated_by else None,
        "updated_at": found.updated_at,
    }


def case_cell_notes(*, case_id: int) -> list[dict[str, Any]]:
    """Cells of the case that were flagged in the review queue or carry a note, with the
    note (empty when none yet), oldest cell first, in one query."""
    flagged = ReviewItem.objects.filter(cell=OuterRef("pk"), flagged=True)
    rows = (
        CellImage.objects.filter(case_id=case_id)
        .annotate(flagged=Exists(flagged))
        .filter(Q(flagged=True) | Q(note__isnull=False))
        .select_related("note__author")
        .order_by("id")
    )
    out = []
    for cell in rows:
        note = getattr(cell, "note", None)
        out.append(
            {
                "cell_id": cell.pk,
                "flagged": cell.flagged,  # type: ignore[attr-defined]
                "note": note.note if note else "",
                "author": note.author.get_username() if note and note.author else None,
                "updated_at": note.updated_at if note else None,
            }
        )
    return out


def case_reports(*, case_id: int) -> QuerySet[CaseReport]:
    """Every report version of the case, newest first (amended ones stay readable)."""
    return (
        CaseReport.objects.filter(case_id=case_id)
        .select_related("signed_by", "second_signed_by", "amends", "case")
        .order_by("-version")
    )


def case_report_get(*, case_id: int, version: int) -> CaseReport:
    return get_or_404(
        case_reports(case_id=case_id), what=f"Report of case {case_id}, version", version=version
    )
