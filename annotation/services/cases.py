"""Writing cases: create one, sign off its differential."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction

from annotation.errors import ApplicationError, get_or_404
from annotation.models import Case
from annotation.selectors.cases import case_open_cell_count
from annotation.services.audit import audit_event_create
from annotation.types import UserLike


def case_create(
    *,
    accession_id: str,
    user: UserLike | None,
    patient_pseudonym: str = "",
    diagnosis: str = "",
    source: str = "api",
    metadata: dict[str, Any] | None = None,
    labels_required: int = 1,
) -> Case:
    accession_id = accession_id.strip()
    if not accession_id:
        raise ApplicationError(
            "A case needs an accession id.", fields={"accession_id": "must not be empty"}
        )
    try:
        # The case and its audit record commit together or not at all.
        with transaction.atomic():
            case = Case.objects.create(
                accession_id=accession_id,
                patient_pseudonym=patient_pseudonym,
                diagnosis=diagnosis,
                source=source,
                metadata=metadata or {},
                labels_required=labels_required,
            )
            audit_event_create(
                actor=user,
                action="case.create",
                target_type="case",
                target_id=case.pk,
                after={"accession_id": accession_id, "diagnosis": diagnosis},
            )
    except IntegrityError:
        raise ApplicationError(
            f"A case with accession id {accession_id!r} already exists; choose another id or "
            "add cells to the existing case.",
            code="duplicate",
            fields={"accession_id": "already in use"},
            status=409,
        ) from None
    return case


def case_signoff(*, case_id: int, user: UserLike) -> Case:
    """Sign off a case's differential. Refused while a person still has to look at some
    of its cells (open review items or unsettled label conflicts)."""
    with transaction.atomic():
        # Locked so two sign-offs, or a sign-off racing a status change, serialise.
        case = get_or_404(Case.objects.select_for_update(), what="Case", pk=case_id)
        if case.status == Case.Status.SIGNED_OFF:
            raise ApplicationError(
                f"Case {case.accession_id} is already signed off.",
                code="already_signed_off",
                status=409,
            )
        open_cells = case_open_cell_count(case_id=case.pk)
        if open_cells:
            raise ApplicationError(
                f"Case {case.accession_id} cannot be signed off yet: {open_cells} of its cells "
                "are still open in the review queue or have conflicting labels. Label them "
                "first (GET /api/cells/?case=" + str(case.pk) + "&label_status=unlabelled).",
                code="cells_still_open",
                fields={"open_cells": str(open_cells)},
                status=409,
            )
        before = case.status
        case.status = Case.Status.SIGNED_OFF
        case.save(update_fields=["status", "updated_at"])
        audit_event_create(
            actor=user,
            action="case.signoff",
            target_type="case",
            target_id=case.pk,
            before={"status": before},
            after={"status": case.status},
        )
    return case
