"""Reading cases: the list with its filters, and a case's differential."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date
from typing import Any

from django.db.models import Count, IntegerField, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce

from annotation.errors import get_or_404
from annotation.models import Case, CellImage, Prediction, ReviewItem
from annotation.selectors.visibility import (
    label_hidden_annotation,
    label_hidden_q,
    sources_hidden_annotation,
)
from annotation.types import UserLike
from mlworker.taxonomy import CLASSES

# Not white cells of the 100-cell count: NRBC are reported per 100 WBC, artifacts not at all.
NOT_IN_WBC_COUNT = frozenset({"NR", "AR"})
NRBC_FLAG_PER_100_WBC = 5.0
LEFT_SHIFT_CODES = ("PR", "MY", "ME")
OPEN_ITEM_STATUSES = (ReviewItem.Status.QUEUED, ReviewItem.Status.LEASED)


@dataclass(frozen=True)
class CaseFilters:
    status: str | None = None
    diagnosis: str | None = None
    created_from: date | None = None
    created_to: date | None = None
    search: str | None = None


def case_list(
    *, filters: CaseFilters | None = None, user: UserLike | None = None
) -> QuerySet[Case]:
    """Cases, newest first, with their cell and labelled-cell counts (one query). A cell
    whose label ``user`` may not see counts as unlabelled (annotation/selectors/visibility.py)."""
    f = filters or CaseFilters()
    hidden = label_hidden_q(user=user)
    if hidden is None:
        n_labelled: Any = Count("cells", filter=Q(cells__current_label__isnull=False))
    else:
        visible_labelled = (
            CellImage.objects.filter(case=OuterRef("pk"), current_label__isnull=False)
            .exclude(hidden)
            .order_by()
            .values("case")
            .annotate(n=Count("pk"))
            .values("n")
        )
        n_labelled = Coalesce(Subquery(visible_labelled, output_field=IntegerField()), Value(0))
    qs = Case.objects.annotate(n_cells=Count("cells"), n_labelled=n_labelled).order_by(
        "-created_at", "-id"
    )
    if f.status:
        qs = qs.filter(status=f.status)
    if f.diagnosis:
        qs = qs.filter(diagnosis__icontains=f.diagnosis)
    if f.created_from:
        qs = qs.filter(created_at__date__gte=f.created_from)
    if f.created_to:
        qs = qs.filter(created_at__date__lte=f.created_to)
    if f.search:
        qs = qs.filter(accession_id__icontains=f.search)
    return qs


def case_get(*, case_id: int) -> Case:
    return get_or_404(Case, what="Case", pk=case_id)


def case_open_cell_count(*, case_id: int) -> int:
    """Cells of the case a person still has to look at: an open review item, or a
    conflict between imported labels that nobody has settled."""
    return (
        CellImage.objects.filter(case_id=case_id)
        .filter(
            Q(review_items__status__in=OPEN_ITEM_STATUSES)
            | Q(has_label_conflict=True, current_label__isnull=True)
        )
        .distinct()
        .count()
    )


def _percent(n: int, of: int) -> float | None:
    return round(100.0 * n / of, 1) if of else None


def case_differential(*, case: Case, user: UserLike | None = None) -> dict[str, Any]:
    """The case's differential count as ``user`` may see it, in four queries whatever its
    size.

    Rules:
    - Each cell counts once, by its current label (a person's or an imported one); a cell
      without a label counts by the active model's predicted class and is marked as
      such (``predicted`` per class, ``source`` "model" when only predictions count);
      a cell with neither is ``unclassified``.
    - Percentages are of the reportable WBC: every classified cell except NRBC (NR) and
      artifacts (AR). NRBC are reported per 100 WBC (``per_100_wbc``), as is the
      hematology convention; artifacts are counted but have no percentage.
    - Normal/abnormal totals follow the taxonomy's groups, over the same reportable WBC.
    - Flags: blasts present; NRBC > 5 per 100 WBC; promyelocytes, myelocytes or
      metamyelocytes present (left shift); cells still to review (open queue items or
      cells the model alone has classified); imported labels in conflict.
    - Blinding: a cell whose label ``user`` may not see (a gold cell, for a reader) counts
      as an unlabelled one, by the model; one whose sources they may not see has no
      conflict (annotation/selectors/visibility.py). ``user=None`` counts every label.
    """
    label_hidden = label_hidden_annotation(user=user)
    sources_hidden = sources_hidden_annotation(user=user)
    rows = CellImage.objects.filter(case=case)
    if label_hidden is not None and sources_hidden is not None:
        rows = rows.annotate(label_hidden=label_hidden, sources_hidden=sources_hidden)
    else:
        rows = rows.annotate(label_hidden=Value(False), sources_hidden=Value(False))
    cells = [
        (cell_id, None if hide_label else code, conflict and not hide_sources)
        for cell_id, code, conflict, hide_label, hide_sources in rows.values_list(
            "id", "current_label__code", "has_label_conflict", "label_hidden", "sources_hidden"
        )
    ]
    predicted: dict[int, str] = dict(
        Prediction.objects.filter(cell__case=case, model_version__status="active").values_list(
            "cell_id", "top_code"
        )
    )
    open_items = (
        ReviewItem.objects.filter(cell__case=case, status__in=OPEN_ITEM_STATUSES)
        .values("cell_id")
        .distinct()
        .count()
    )
    labelled: Counter[str] = Counter()
    by_model: Counter[str] = Counter()
    unclassified = 0
    conflicts = 0
    for cell_id, label_code, conflict in cells:
        if label_code:
            labelled[label_code] += 1
        elif cell_id in predicted:
            by_model[predicted[cell_id]] += 1
        else:
            unclassified += 1
        if conflict and not label_code:
            conflicts += 1

    total = labelled + by_model
    wbc = sum(n for code, n in total.items() if code not in NOT_IN_WBC_COUNT)
    classes = []
    for cls in CLASSES:
        n = total[cls.code]
        source = None
        if labelled[cls.code] and by_model[cls.code]:
            source = "mixed"
        elif labelled[cls.code]:
            source = "label"
        elif by_model[cls.code]:
            source = "model"
        classes.append(
            {
                "code": cls.code,
                "name": cls.name,
                "group": cls.group,
                "count": n,
                "labelled": labelled[cls.code],
                "predicted": by_model[cls.code],
                "source": source,
                "percent": None if cls.code in NOT_IN_WBC_COUNT else _percent(n, wbc),
                "per_100_wbc": _percent(n, wbc) if cls.code == "NR" else None,
            }
        )
    normal = sum(
        total[c.code] for c in CLASSES if c.group == "normal" and c.code not in NOT_IN_WBC_COUNT
    )
    abnormal = wbc - normal
    nrbc_per_100 = _percent(total["NR"], wbc)

    flags = []
    if total["BL"]:
        flags.append(
            {"code": "blasts_present", "message": f"Blasts present ({total['BL']} cells)."}
        )
    if nrbc_per_100 is not None and nrbc_per_100 > NRBC_FLAG_PER_100_WBC:
        flags.append(
            {
                "code": "nrbc_over_5",
                "message": f"NRBC {nrbc_per_100} per 100 WBC (more than "
                f"{NRBC_FLAG_PER_100_WBC:g}).",
            }
        )
    shift = {code: total[code] for code in LEFT_SHIFT_CODES if total[code]}
    if shift:
        flags.append(
            {
                "code": "left_shift",
                "message": "Immature granulocytes present (left shift): "
                + ", ".join(f"{code} {n}" for code, n in shift.items())
                + ".",
            }
        )
    model_only = sum(by_model.values())
    if open_items or model_only or unclassified:
        flags.append(
            {
                "code": "unreviewed_cells",
                "message": f"{open_items} cells open in the review queue, {model_only} "
                f"classified by the model only, {unclassified} not classified yet.",
            }
        )
    if conflicts:
        flags.append(
            {
                "code": "label_conflicts",
                "message": f"{conflicts} cells have conflicting imported labels that "
                "nobody has settled.",
            }
        )
    return {
        "cells_total": len(cells),
        "labelled": sum(labelled.values()),
        "predicted_only": model_only,
        "unclassified": unclassified,
        "open_review_items": open_items,
        "label_conflicts": conflicts,
        "wbc_counted": wbc,
        "source": "label" if not model_only else ("model" if not labelled else "mixed"),
        "classes": classes,
        "totals": {
            "normal": {"count": normal, "percent": _percent(normal, wbc)},
            "abnormal": {"count": abnormal, "percent": _percent(abnormal, wbc)},
            "nrbc": {"count": total["NR"], "per_100_wbc": nrbc_per_100},
            "artifacts": {"count": total["AR"]},
        },
        "flags": flags,
    }
