"""Reading cases: the list with its filters, a case's differential (with where each count
came from), the lab's review rules and whether a case may be signed."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date
from typing import Any

from django.db.models import Count, IntegerField, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce

from annotation.errors import get_or_404
from annotation.models import (
    Case,
    CaseReport,
    CellImage,
    ModelVersion,
    Prediction,
    ReviewItem,
    ReviewRules,
)
from annotation.selectors.routing import routing_config_get
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
# Labels a person gave in the portal; the others are imported (analyser or technologist).
PORTAL_SOURCES = frozenset({"hematologist", "adjudicated"})
# Flags a report carries: about the patient's cells, not the state of the review.
CLINICAL_FLAGS = ("blasts_present", "nrbc_over_5", "left_shift")
# A case in one of these states has a signature on it; its labels and comments are frozen
# until it is reopened.
SIGNED_STATUSES = frozenset(
    {Case.Status.AWAITING_SECOND, Case.Status.SIGNED_OFF, Case.Status.AMENDED}
)


@dataclass(frozen=True)
class CaseFilters:
    status: str | None = None
    diagnosis: str | None = None
    created_from: date | None = None
    created_to: date | None = None
    search: str | None = None


def _cells(n: int, one: str = "", many: str = "", what: str = "") -> str:
    """ "1 cell is" / "3 cells are": counts in messages read as sentences."""
    verb = one if n == 1 else many
    return f"{n} {what}{'cell' if n == 1 else 'cells'}{' ' + verb if verb else ''}"


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


def review_rules_get() -> ReviewRules:
    """The lab's review rules: the one row, made with the defaults on first use."""
    rules, _ = ReviewRules.objects.get_or_create(pk=1)
    return rules


def _percent(n: int, of: int) -> float | None:
    return round(100.0 * n / of, 1) if of else None


@dataclass(frozen=True)
class _CellRow:
    cell_id: int
    label: str | None  # the current label's code, None when there is none (or it is hidden)
    label_source: str | None
    conflict: bool  # imported labels disagree and nobody has settled it


def case_differential(*, case: Case, user: UserLike | None = None) -> dict[str, Any]:
    """The case's differential as ``user`` may see it, in a fixed number of queries
    whatever its size.

    Rules:
    - Each cell counts once, under one provenance: **reviewed in the portal** (its current
      label is a hematologist's or an adjudicated one), **imported** (an imported label: the
      analyser's or a technologist's signed class, from ``case.source``), or **model only**
      (no label; the active model's predicted class); a cell with none is ``unclassified``.
    - Headline counts (``count``) and percentages are over **reviewed** cells (portal +
      imported); model-only counts stand beside them and count in nothing else.
    - Percentages are of the reviewed WBC: every reviewed cell except NRBC (NR) and
      artifacts (AR). NRBC are reported per 100 reviewed WBC (``per_100_wbc``); artifacts
      are counted but have no percentage.
    - Flags (blasts present; NRBC > 5 per 100 WBC; promyelocytes, myelocytes or
      metamyelocytes present: left shift) are computed on reviewed cells only. Two more
      say what is left to do: cells not reviewed yet, imported labels in conflict.
    - **Unidentified**: a cell without a label that is open in the review queue, or whose
      active-model confidence is below the routing threshold, or that the model has not
      classified. It must be classified by a person before the case can be signed.
    - **Open disagreements**: cells whose independent reads disagree (awaiting
      adjudication) and cells whose imported labels conflict with nobody having decided.
    - Blinding: a cell whose label ``user`` may not see (a gold cell, for a reader) counts
      as an unlabelled one; one whose sources they may not see has no conflict
      (annotation/selectors/visibility.py). ``user=None`` counts every label (sign-off and
      the report use that).
    """
    label_hidden = label_hidden_annotation(user=user)
    sources_hidden = sources_hidden_annotation(user=user)
    rows = CellImage.objects.filter(case=case)
    if label_hidden is not None and sources_hidden is not None:
        rows = rows.annotate(label_hidden=label_hidden, sources_hidden=sources_hidden)
    else:
        rows = rows.annotate(label_hidden=Value(False), sources_hidden=Value(False))
    cells = [
        _CellRow(
            cell_id=cell_id,
            label=None if hide_label else code,
            label_source=None if hide_label else source,
            conflict=bool(conflict) and not hide_sources,
        )
        for cell_id, code, source, conflict, hide_label, hide_sources in rows.values_list(
            "id",
            "current_label__code",
            "current_label__source",
            "has_label_conflict",
            "label_hidden",
            "sources_hidden",
        )
    ]
    predicted: dict[int, tuple[str, float]] = {
        cell_id: (code, confidence)
        for cell_id, code, confidence in Prediction.objects.filter(
            cell__case=case, model_version__status=ModelVersion.Status.ACTIVE
        ).values_list("cell_id", "top_code", "confidence")
    }
    item_status: dict[int, set[str]] = {}
    for cell_id, status in ReviewItem.objects.filter(
        cell__case=case,
        status__in=[*OPEN_ITEM_STATUSES, ReviewItem.Status.ADJUDICATION],
        is_gold=False,
    ).values_list("cell_id", "status"):
        item_status.setdefault(cell_id, set()).add(status)
    threshold = routing_config_get().confidence_threshold
    active_name = (
        ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE)
        .values_list("name", flat=True)
        .first()
    )

    portal: Counter[str] = Counter()
    imported: Counter[str] = Counter()
    model_only: Counter[str] = Counter()
    unclassified = unidentified = open_cells = open_labelled = disagreements = conflicts = 0
    for cell in cells:
        statuses = item_status.get(cell.cell_id, set())
        is_open = bool(statuses & set(OPEN_ITEM_STATUSES))
        open_cells += is_open
        open_labelled += is_open and bool(cell.label)
        prediction = predicted.get(cell.cell_id)
        if cell.label:
            (portal if cell.label_source in PORTAL_SOURCES else imported)[cell.label] += 1
        elif prediction is not None:
            model_only[prediction[0]] += 1
        else:
            unclassified += 1
        if not cell.label and (is_open or prediction is None or prediction[1] < threshold):
            unidentified += 1
        unsettled_conflict = cell.conflict and not cell.label
        conflicts += unsettled_conflict
        if ReviewItem.Status.ADJUDICATION in statuses or unsettled_conflict:
            disagreements += 1

    reviewed = portal + imported
    wbc = sum(n for code, n in reviewed.items() if code not in NOT_IN_WBC_COUNT)
    model_wbc = sum(n for code, n in model_only.items() if code not in NOT_IN_WBC_COUNT)
    classes = []
    for cls in CLASSES:
        n = reviewed[cls.code]
        in_wbc = cls.code not in NOT_IN_WBC_COUNT
        classes.append(
            {
                "code": cls.code,
                "name": cls.name,
                "group": cls.group,
                "count": n,
                "reviewed_in_portal": portal[cls.code],
                "imported": imported[cls.code],
                "model_only": model_only[cls.code],
                "percent": _percent(n, wbc) if in_wbc else None,
                "model_only_percent": _percent(model_only[cls.code], model_wbc) if in_wbc else None,
                "per_100_wbc": _percent(n, wbc) if cls.code == "NR" else None,
            }
        )
    normal = sum(
        reviewed[c.code] for c in CLASSES if c.group == "normal" and c.code not in NOT_IN_WBC_COUNT
    )
    abnormal = wbc - normal
    nrbc_per_100 = _percent(reviewed["NR"], wbc)
    n_model_only = sum(model_only.values())
    flags = _clinical_flags(reviewed=reviewed, nrbc_per_100=nrbc_per_100)
    if open_cells or n_model_only or unclassified:
        flags.append(
            {
                "code": "unreviewed_cells",
                "message": f"{_cells(open_cells)} open in the review queue, {n_model_only} "
                f"classified by the model only, {unclassified} not classified yet; they are "
                "not in the counts.",
            }
        )
    if conflicts:
        flags.append(
            {
                "code": "label_conflicts",
                "message": f"{_cells(conflicts, 'has', 'have')} conflicting imported labels that "
                "nobody has settled.",
            }
        )
    return {
        "cells_total": len(cells),
        "reviewed": sum(reviewed.values()),
        "reviewed_in_portal": sum(portal.values()),
        "imported": sum(imported.values()),
        "imported_source": case.source or None,
        "model_only": n_model_only,
        "unclassified": unclassified,
        "unidentified": unidentified,
        "open_review_items": open_cells,
        "open_labelled_cells": open_labelled,
        "open_disagreements": disagreements,
        "label_conflicts": conflicts,
        "wbc_counted": wbc,
        "model_only_wbc": model_wbc,
        "model_version": active_name,
        "confidence_threshold": threshold,
        "classes": classes,
        "totals": {
            "normal": {"count": normal, "percent": _percent(normal, wbc)},
            "abnormal": {"count": abnormal, "percent": _percent(abnormal, wbc)},
            "nrbc": {"count": reviewed["NR"], "per_100_wbc": nrbc_per_100},
            "artifacts": {"count": reviewed["AR"]},
        },
        "flags": flags,
    }


def _clinical_flags(*, reviewed: Counter[str], nrbc_per_100: float | None) -> list[dict[str, str]]:
    flags = []
    if reviewed["BL"]:
        flags.append(
            {"code": "blasts_present", "message": f"Blasts present ({reviewed['BL']} cells)."}
        )
    if nrbc_per_100 is not None and nrbc_per_100 > NRBC_FLAG_PER_100_WBC:
        flags.append(
            {
                "code": "nrbc_over_5",
                "message": f"NRBC {nrbc_per_100} per 100 WBC (more than "
                f"{NRBC_FLAG_PER_100_WBC:g}).",
            }
        )
    shift = {code: reviewed[code] for code in LEFT_SHIFT_CODES if reviewed[code]}
    if shift:
        flags.append(
            {
                "code": "left_shift",
                "message": "Immature granulocytes present (left shift): "
                + ", ".join(f"{code} {n}" for code, n in shift.items())
                + ".",
            }
        )
    return flags


def signoff_rules_unmet(
    *, differential: dict[str, Any], rules: ReviewRules
) -> list[dict[str, str]]:
    """Every review rule the differential (``case_differential(user=None)``) does not
    meet yet, each with a message a person can act on. Empty: the rules allow signing."""
    d = differential
    unmet: list[dict[str, str]] = []
    if d["cells_total"] == 0:
        unmet.append({"code": "no_cells", "message": "The case has no cells."})
    target = rules.count_target
    if target:
        if d["wbc_counted"] < target:
            unmet.append(
                {
                    "code": "count_target_not_reached",
                    "message": f"Count target not reached: {d['wbc_counted']} of {target} "
                    "white cells reviewed (model-only cells do not count).",
                }
            )
    else:
        not_reviewed = d["model_only"] + d["unclassified"]
        if not_reviewed:
            unmet.append(
                {
                    "code": "count_target_not_reached",
                    "message": f"Count target is every cell: {not_reviewed} of "
                    f"{d['cells_total']} cells are not reviewed yet.",
                }
            )
    if d["unidentified"]:
        unmet.append(
            {
                "code": "unidentified_cells",
                "message": f"{_cells(d['unidentified'], 'is', 'are')} unidentified (queued, or the model "
                f"is below {d['confidence_threshold']:.0%} sure, or it has not classified "
                "them): classify them first.",
            }
        )
    if d["open_labelled_cells"]:
        unmet.append(
            {
                "code": "cells_still_open",
                "message": f"{_cells(d['open_labelled_cells'], 'is', 'are', 'labelled ')} still open in the review "
                "queue.",
            }
        )
    if d["open_disagreements"]:
        unmet.append(
            {
                "code": "open_disagreements",
                "message": f"{_cells(d['open_disagreements'], 'has', 'have')} reads or imported labels "
                "that disagree and nobody has decided (adjudicate them first).",
            }
        )
    return unmet


def case_latest_report(*, case_id: int) -> CaseReport | None:
    return (
        CaseReport.objects.filter(case_id=case_id)
        .select_related("signed_by", "second_signed_by")
        .order_by("-version")
        .first()
    )


def case_signoff_state(*, case: Case, user: UserLike | None) -> dict[str, Any]:
    """Whether ``user`` may sign ``case`` now and, if not, every reason why; the rules in
    force; and the latest report's signatures. The sign-off service applies the same rules
    (annotation/services/cases.py ``case_sign``)."""
    rules = review_rules_get()
    latest = case_latest_report(case_id=case.pk)
    unmet: list[dict[str, str]] = []
    step: str | None = None
    if case.status == Case.Status.AWAITING_SECOND:
        step = "second_signature"
        if latest is not None and user is not None and latest.signed_by_id == user.pk:
            unmet.append(
                {
                    "code": "second_signer_must_differ",
                    "message": "You gave the first signature; the second must come from "
                    "another user.",
                }
            )
    elif case.status in (Case.Status.SIGNED_OFF, Case.Status.AMENDED):
        unmet.append(
            {
                "code": "already_signed_off",
                "message": f"Case {case.accession_id} is signed; reopen it (with a reason) "
                "to amend it.",
            }
        )
    else:
        step = "first_signature"
        unmet = signoff_rules_unmet(
            differential=case_differential(case=case, user=None), rules=rules
        )
    return {
        "can_sign": not unmet,
        "next_step": step,
        "unmet": unmet,
        "status": case.status,
        "rules": {
            "count_target": rules.count_target,
            "two_person_signoff": rules.two_person_signoff,
        },
        "latest_report": latest,
        "reopen_reason": case_open_reopen_reason(case=case),
    }


def case_open_reopen_reason(*, case: Case) -> str:
    """Why the case was reopened, while that amendment is not final yet; else ""."""
    if case.status == Case.Status.AMENDING:
        reopening = case.reopenings.order_by("-reopened_at", "-id").first()
        return reopening.reason if reopening else ""
    if case.status == Case.Status.AWAITING_SECOND:
        latest = case_latest_report(case_id=case.pk)
        return latest.amend_reason if latest else ""
    return ""
