"""The signed report of a case: its frozen content, and the printable HTML and PDF.

``report_content_build`` freezes what a signature signs: the reviewed differential
(annotation/selectors/cases.py ``case_differential``, every label counted), the flags,
the interpretive comments and the notes on flagged cells. The HTML and the PDF are made
from that content alone, never from the live case, so a report reads the same whenever it
is opened, however the case changed since. The PDF is WeasyPrint's rendering of the same
HTML with the print stylesheet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib.staticfiles import finders
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from annotation.models import (
    Case,
    CaseInterpretation,
    CaseReport,
    CellNote,
    ModelVersion,
    Prediction,
    ReviewRules,
)
from annotation.selectors.cases import CLINICAL_FLAGS, NOT_IN_WBC_COUNT, case_differential
from annotation.types import UserLike
from mlworker.taxonomy import CLASSES

REPORT_CSS = "annotation/report.css"


def signer_entry(user: UserLike, signed_at: Any) -> dict[str, str]:
    return {
        "username": user.get_username(),
        "full_name": user.get_full_name() or user.get_username(),  # type: ignore[union-attr]
        "signed_at": signed_at.isoformat(),
    }


def _model_version_name(case: Case) -> str | None:
    """The model that pre-classified the case: the active version if it scored the case's
    cells, else the version of the case's newest prediction; None when none did."""
    active = Prediction.objects.filter(
        cell__case=case, model_version__status=ModelVersion.Status.ACTIVE
    ).values_list("model_version__name", flat=True)
    name = active.first()
    if name is None:
        name = (
            Prediction.objects.filter(cell__case=case)
            .order_by("-created_at", "-id")
            .values_list("model_version__name", flat=True)
            .first()
        )
    return name


def report_content_build(
    *,
    case: Case,
    version: int,
    rules: ReviewRules,
    signer: UserLike,
    signed_at: Any,
    amends: CaseReport | None,
    amend_reason: str,
) -> dict[str, Any]:
    """The frozen report content (the shape is documented in annotation/review_queue.md,
    "The signed report"; the LIS delivery reads it)."""
    d = case_differential(case=case, user=None)
    wbc_codes = [c.code for c in CLASSES if c.code not in NOT_IN_WBC_COUNT]
    by_code = {row["code"]: row for row in d["classes"]}
    interpretation = CaseInterpretation.objects.filter(case=case).first()
    coded_text = {c["code"]: c["text"] for c in rules.coded_comments}
    coded = [
        {"code": code, "text": coded_text.get(code, "")}
        for code in (interpretation.coded if interpretation else [])
    ]
    notes = [
        {"cell_id": cell_id, "note": note}
        for cell_id, note in CellNote.objects.filter(cell__case=case)
        .order_by("cell_id")
        .values_list("cell_id", "note")
    ]
    return {
        "case": {
            "id": case.pk,
            "accession_id": case.accession_id,
            "patient_pseudonym": case.patient_pseudonym,
            "source": case.source,
            "diagnosis": case.diagnosis,
        },
        "version": version,
        "counts": {code: by_code[code]["count"] for code in wbc_codes},
        "percentages": {code: by_code[code]["percent"] or 0.0 for code in wbc_codes},
        "total_wbc": d["wbc_counted"],
        "non_wbc": {code: by_code[code]["count"] for code in sorted(NOT_IN_WBC_COUNT)},
        "nrbc_per_100_wbc": d["totals"]["nrbc"]["per_100_wbc"],
        "model_only": {code: row["model_only"] for code, row in by_code.items()},
        "flags": [
            {"code": f["code"], "label": f["message"]}
            for f in d["flags"]
            if f["code"] in CLINICAL_FLAGS
        ],
        "comments": {"text": interpretation.text if interpretation else "", "coded": coded},
        "flagged_cell_notes": notes,
        "signers": [signer_entry(signer, signed_at)],
        "model_version": _model_version_name(case),
        "amends_version": amends.version if amends else None,
        "amend_reason": amend_reason,
        # More than the contract asks, for the printed report and the reader.
        "class_names": {c.code: c.name for c in CLASSES},
        "totals": {
            "normal": d["totals"]["normal"],
            "abnormal": d["totals"]["abnormal"],
        },
        "provenance": {
            "cells_total": d["cells_total"],
            "reviewed_in_portal": d["reviewed_in_portal"],
            "imported": d["imported"],
            "imported_source": d["imported_source"],
            "model_only": d["model_only"],
            "unclassified": d["unclassified"],
        },
        "count_target": rules.count_target,
        "two_person_signoff": rules.two_person_signoff,
    }


def _css_text() -> str:
    found = finders.find(REPORT_CSS)
    path = found[0] if isinstance(found, list) else found
    return Path(path).read_text(encoding="utf-8") if path else ""


def _when(value: str | None) -> Any:
    parsed = parse_datetime(value) if value else None
    return timezone.localtime(parsed) if parsed else None


def _context(report: CaseReport, *, inline_css: bool) -> dict[str, Any]:
    content = report.content
    names = content.get("class_names") or {c.code: c.name for c in CLASSES}
    # In taxonomy order: the stored JSON (jsonb) keeps its keys sorted, not in our order.
    rows = [
        {
            "code": c.code,
            "name": names.get(c.code, c.name),
            "count": content["counts"][c.code],
            "percent": content["percentages"].get(c.code),
            "model_only": content["model_only"].get(c.code, 0),
        }
        for c in CLASSES
        if c.code in content["counts"]
    ]
    non_wbc = [
        {"code": code, "name": names.get(code, code), "count": n}
        for code, n in content["non_wbc"].items()
    ]
    signers = [{**s, "when": _when(s.get("signed_at"))} for s in content["signers"]]
    return {
        "report": report,
        "content": content,
        "rows": rows,
        "non_wbc": non_wbc,
        "signers": signers,
        "inline_css": inline_css,
        "css": _css_text() if inline_css else "",
        "superseded_by": list(report.amended_by.values_list("version", flat=True)),
    }


def report_html_render(*, report: CaseReport, inline_css: bool = False) -> str:
    """The printable report. For a browser the stylesheet is linked (the portal's CSP
    allows no inline style); for the PDF it is inlined."""
    return render_to_string("annotation/case_report.html", _context(report, inline_css=inline_css))


def report_pdf_render(*, report: CaseReport) -> bytes:
    """The report as PDF: WeasyPrint's rendering of the same HTML with the print CSS."""
    from PIL import ImageFile

    # imported here: Pango loads only when a PDF is made. Importing WeasyPrint sets
    # Pillow's process-wide LOAD_TRUNCATED_IMAGES, which would make this process accept
    # truncated cell uploads from then on: the flag is put back (the report has no images).
    truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    from weasyprint import HTML

    ImageFile.LOAD_TRUNCATED_IMAGES = truncated
    pdf: bytes = HTML(string=report_html_render(report=report, inline_css=True)).write_pdf()
    return pdf
