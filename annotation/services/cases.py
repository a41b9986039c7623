"""Writing cases: create one; review it to a signed report (the lab's review rules,
interpretive comments, notes on cells, one or two signatures, reopening and amending).

Sign-off in one picture::

    new --first person label--> in_review --sign--> signed_off (report v1 final)
                                          +-sign, two-person--> awaiting_second
                                               --another user signs--> signed_off
    signed_off/amended --reopen(reason)--> amending --sign--> amended (v2 amends v1)

Every signature re-enters the password (``check_password``); a wrong one is a 403 and
is audited. The rules a first signature must meet are
``annotation.selectors.cases.signoff_rules_unmet``; the GET of the sign-off endpoint
shows the same list before anyone presses the button."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from annotation.errors import ApplicationError, get_or_404
from annotation.models import (
    Case,
    CaseInterpretation,
    CaseReopening,
    CaseReport,
    CellImage,
    CellNote,
    ReviewRules,
)
from annotation.selectors.cases import (
    SIGNED_STATUSES,
    case_differential,
    case_latest_report,
    review_rules_get,
    signoff_rules_unmet,
)
from annotation.services.audit import audit_event_create
from annotation.services.reports import report_content_build, signer_entry
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


# --- review rules ---------------------------------------------------------------------

COUNT_TARGETS = tuple(ReviewRules.CountTarget.values)
MAX_CODED_COMMENTS = 200


def _coded_comments_valid(value: Any) -> list[dict[str, str]]:
    problem = "a list of {code, text} objects with distinct, non-empty codes"
    if not isinstance(value, list) or len(value) > MAX_CODED_COMMENTS:
        raise ApplicationError(
            f"coded_comments must be {problem} (at most {MAX_CODED_COMMENTS}).",
            fields={"coded_comments": problem},
        )
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for entry in value:
        code = str(entry.get("code", "")).strip() if isinstance(entry, dict) else ""
        text = str(entry.get("text", "")).strip() if isinstance(entry, dict) else ""
        if not code or not text or code in seen or len(code) > 32 or len(text) > 1000:
            raise ApplicationError(
                f"coded_comments must be {problem}; {entry!r} is not (code up to 32 "
                "characters, text up to 1000).",
                fields={"coded_comments": problem},
            )
        seen.add(code)
        out.append({"code": code, "text": text})
    return out


def review_rules_update(
    *,
    user: UserLike,
    count_target: int | None = None,
    two_person_signoff: bool | None = None,
    coded_comments: list[dict[str, str]] | None = None,
) -> ReviewRules:
    """Change the lab's review rules (admins); audited with the values before and after."""
    if count_target is not None and count_target not in COUNT_TARGETS:
        raise ApplicationError(
            f"count_target must be one of {', '.join(map(str, COUNT_TARGETS))} (0 = every "
            f"cell), got {count_target}.",
            fields={"count_target": "one of " + ", ".join(map(str, COUNT_TARGETS))},
        )
    cleaned = None if coded_comments is None else _coded_comments_valid(coded_comments)
    with transaction.atomic():
        review_rules_get()
        rules = ReviewRules.objects.select_for_update().get(pk=1)
        names = ["count_target", "two_person_signoff", "coded_comments"]
        before = {name: getattr(rules, name) for name in names}
        if count_target is not None:
            rules.count_target = count_target
        if two_person_signoff is not None:
            rules.two_person_signoff = two_person_signoff
        if cleaned is not None:
            rules.coded_comments = cleaned
        rules.updated_by = user  # type: ignore[assignment]
        rules.save()
        audit_event_create(
            actor=user,
            action="review_rules.update",
            target_type="review_rules",
            target_id=rules.pk,
            before=before,
            after={name: getattr(rules, name) for name in names},
        )
    return rules


# --- while the case is reviewed -------------------------------------------------------


def _refuse_if_signed(case: Case, doing: str) -> None:
    if case.status in SIGNED_STATUSES:
        raise ApplicationError(
            f"Case {case.accession_id} is signed ({case.get_status_display()}), so "
            f"{doing} is not possible; reopen it with a reason to amend it.",
            code="case_signed",
            status=409,
        )


def case_label_landed(*, case_id: int, user: UserLike | None) -> None:
    """A person's label is landing on a cell of the case (called by the label services,
    inside their transaction): refused on a signed case; a new case is now in review."""
    # Locked (after the cell, which the caller holds; signing locks only the case) so a
    # label cannot land on a case being signed after the signature read its cells.
    case = (
        Case.objects.select_for_update().filter(pk=case_id).only("status", "accession_id").first()
    )
    if case is None:
        return
    _refuse_if_signed(case, "labelling its cells")
    if case.status == Case.Status.NEW:
        moved = Case.objects.filter(pk=case_id, status=Case.Status.NEW).update(
            status=Case.Status.IN_REVIEW, updated_at=timezone.now()
        )
        if moved:
            audit_event_create(
                actor=user,
                action="case.status",
                target_type="case",
                target_id=case_id,
                before={"status": Case.Status.NEW},
                after={"status": Case.Status.IN_REVIEW},
            )


def case_interpretation_update(
    *, case_id: int, user: UserLike, text: str, coded: list[str]
) -> CaseInterpretation:
    """Set the case's interpretive comment (free text and codes from the lab's list);
    editable until the case is signed."""
    known = {c["code"] for c in review_rules_get().coded_comments}
    unknown = [code for code in coded if code not in known]
    if unknown:
        raise ApplicationError(
            f"Unknown coded comment(s) {', '.join(unknown)}; the lab's list has "
            f"{', '.join(sorted(known)) or 'no codes yet (an admin sets them)'}.",
            fields={"coded": "codes from the review rules' coded_comments"},
        )
    with transaction.atomic():
        case = get_or_404(Case.objects.select_for_update(), what="Case", pk=case_id)
        _refuse_if_signed(case, "changing its comments")
        interpretation, _ = CaseInterpretation.objects.get_or_create(case=case)
        before = {"text": interpretation.text, "coded": interpretation.coded}
        interpretation.text = text
        interpretation.coded = list(dict.fromkeys(coded))
        interpretation.updated_by = user  # type: ignore[assignment]
        interpretation.save()
        audit_event_create(
            actor=user,
            action="case.comment",
            target_type="case",
            target_id=case.pk,
            before=before,
            after={"text": interpretation.text, "coded": interpretation.coded},
        )
    return interpretation


def case_cell_note_set(*, case_id: int, cell_id: int, user: UserLike, note: str) -> CellNote | None:
    """Set (or, with an empty note, remove) the note on a cell of the case, printed on
    the report under "Notes on flagged cells"; editable until the case is signed."""
    note = note.strip()
    with transaction.atomic():
        case = get_or_404(Case.objects.select_for_update(), what="Case", pk=case_id)
        _refuse_if_signed(case, "changing its cell notes")
        cell = get_or_404(CellImage.objects.filter(case=case), what="Cell of this case", pk=cell_id)
        existing = CellNote.objects.filter(cell=cell).first()
        before = {"note": existing.note} if existing else None
        if not note:
            if existing:
                existing.delete()
            result = None
        else:
            result = existing or CellNote(cell=cell)
            result.note = note
            result.author = user  # type: ignore[assignment]
            result.save()
        audit_event_create(
            actor=user,
            action="case.cell_note",
            target_type="cell",
            target_id=cell.pk,
            before=before,
            after={"note": note} if note else None,
        )
    return result


# --- signatures -------------------------------------------------------------------------


def _password_checked(*, case_id: int, user: UserLike, password: str) -> None:
    """The signer types their password again. A wrong one is refused (403) and the
    refusal is audited in its own transaction, so it is kept although nothing else is."""
    if user.check_password(password):  # type: ignore[union-attr]
        return
    with transaction.atomic():
        audit_event_create(
            actor=user,
            action="case.sign.refused",
            target_type="case",
            target_id=case_id,
            after={"reason": "wrong_password"},
        )
    raise ApplicationError(
        "The password is not right; a signature needs your own password. Nothing was signed.",
        code="wrong_password",
        fields={"password": "not your password"},
        status=403,
    )


def _report_finalised(report: CaseReport) -> None:
    """Hand a final report to the LIS delivery (annotation/services/lis), in the same
    transaction as the signature that made it final."""
    try:
        from annotation.services.lis import lis_report_finalised  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # the LIS delivery is not part of this build yet
        return
    lis_report_finalised(report_id=report.pk)


def case_sign(*, case_id: int, user: UserLike, password: str) -> CaseReport:
    """Sign the case's differential: the first signature freezes a new report version
    (refused, 409, listing every unmet review rule); with two-person sign-off it waits
    for a second signature by another user, which makes it final."""
    _password_checked(case_id=case_id, user=user, password=password)
    with transaction.atomic():
        # Locked so two signatures, or a signature racing a reopening, serialise.
        case = get_or_404(Case.objects.select_for_update(), what="Case", pk=case_id)
        if case.status == Case.Status.AWAITING_SECOND:
            return _second_signature(case=case, user=user)
        if case.status in (Case.Status.SIGNED_OFF, Case.Status.AMENDED):
            raise ApplicationError(
                f"Case {case.accession_id} is already signed off; reopen it (with a reason) "
                "to amend it.",
                code="already_signed_off",
                status=409,
            )
        rules = review_rules_get()
        unmet = signoff_rules_unmet(
            differential=case_differential(case=case, user=None), rules=rules
        )
        if unmet:
            raise ApplicationError(
                f"Case {case.accession_id} cannot be signed yet: "
                + " ".join(rule["message"] for rule in unmet),
                code="signoff_rules_unmet",
                fields={rule["code"]: rule["message"] for rule in unmet},
                status=409,
            )
        return _first_signature(case=case, user=user, rules=rules)


def _first_signature(*, case: Case, user: UserLike, rules: ReviewRules) -> CaseReport:
    previous = case_latest_report(case_id=case.pk)
    amends = previous if case.status == Case.Status.AMENDING else None
    reason = ""
    if amends is not None:
        reopening = case.reopenings.order_by("-reopened_at", "-id").first()
        reason = reopening.reason if reopening else ""
    now = timezone.now()
    version = (previous.version + 1) if previous else 1
    final = not rules.two_person_signoff
    report = CaseReport.objects.create(
        case=case,
        version=version,
        content=report_content_build(
            case=case, version=version, rules=rules, signer=user, signed_at=now,
            amends=amends, amend_reason=reason,
        ),
        signed_by=user,
        signed_at=now,
        amends=amends,
        amend_reason=reason,
        is_final=final,
    )  # fmt: skip
    before = case.status
    if not final:
        case.status = Case.Status.AWAITING_SECOND
    else:
        case.status = Case.Status.AMENDED if amends else Case.Status.SIGNED_OFF
    case.save(update_fields=["status", "updated_at"])
    audit_event_create(
        actor=user,
        action="case.signoff",
        target_type="case",
        target_id=case.pk,
        before={"status": before},
        after={"status": case.status, "report_version": version, "is_final": final},
    )
    if final:
        _report_finalised(report)
    return report


def _second_signature(*, case: Case, user: UserLike) -> CaseReport:
    report = case_latest_report(case_id=case.pk)
    if report is None or report.is_final:  # pragma: no cover - the status says otherwise
        raise ApplicationError(
            f"Case {case.accession_id} has no report awaiting a second signature.",
            code="no_report_awaiting_signature",
            status=409,
        )
    if report.signed_by_id == user.pk:
        raise ApplicationError(
            "You gave the first signature; two-person sign-off needs the second from another user.",
            code="second_signer_must_differ",
            status=409,
        )
    now = timezone.now()
    report.second_signed_by = user  # type: ignore[assignment]
    report.second_signed_at = now
    report.is_final = True
    report.content = {
        **report.content,
        "signers": [*report.content["signers"], signer_entry(user, now)],
    }
    report.save(update_fields=["second_signed_by", "second_signed_at", "is_final", "content"])
    case.status = Case.Status.AMENDED if report.amends_id else Case.Status.SIGNED_OFF
    case.save(update_fields=["status", "updated_at"])
    audit_event_create(
        actor=user,
        action="case.signoff.second",
        target_type="case",
        target_id=case.pk,
        before={"status": Case.Status.AWAITING_SECOND},
        after={"status": case.status, "report_version": report.version, "is_final": True},
    )
    _report_finalised(report)
    return report


def case_reopen(*, case_id: int, user: UserLike, reason: str) -> CaseReopening:
    """Reopen a signed case to amend it; the reason is required and goes on the amended
    report. The signed report stays as it is, readable; the next signature makes a new
    version that amends it."""
    reason = reason.strip()
    if not reason:
        raise ApplicationError(
            "Say why the case is reopened; the reason is printed on the amended report.",
            fields={"reason": "required"},
        )
    with transaction.atomic():
        case = get_or_404(Case.objects.select_for_update(), what="Case", pk=case_id)
        report = case_latest_report(case_id=case.pk)
        if case.status not in (Case.Status.SIGNED_OFF, Case.Status.AMENDED) or report is None:
            raise ApplicationError(
                f"Case {case.accession_id} is {case.get_status_display().lower()}; only a "
                "signed case (every signature given) can be reopened.",
                code="not_signed",
                status=409,
            )
        reopening = CaseReopening.objects.create(
            case=case, report=report, reason=reason, reopened_by=user, reopened_at=timezone.now()
        )
        before = case.status
        case.status = Case.Status.AMENDING
        case.save(update_fields=["status", "updated_at"])
        audit_event_create(
            actor=user,
            action="case.reopen",
            target_type="case",
            target_id=case.pk,
            before={"status": before, "report_version": report.version},
            after={"status": case.status, "reason": reason},
        )
    return reopening
