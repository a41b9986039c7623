"""The README.md inside every export zip: what was exported, with which filters, and
what each file and provenance column means, so the zip explains itself."""

from __future__ import annotations

from collections import Counter

from django.utils import timezone

from annotation.services.exports.filters import ExportFilters
from mlworker.taxonomy import CLASSES

PROVENANCE_DOC = (
    "label_id, label_source (imported / hematologist / adjudicated), annotator, "
    "labelled_at, supersedes_label_id: the current label and who gave it when. "
    "model_version, model_suggestion, model_confidence: what the model suggested at "
    "labelling time (the version that queued the cell for review, otherwise the newest "
    "prediction made before the label; for unlabelled cells the active model's)."
)


def export_readme(*, fmt: str, files_doc: str, filters: ExportFilters, counts: Counter[str]) -> str:
    """The README text; ``counts`` holds the cells per label code ("" for unlabelled)."""
    lines = [
        f"# WBC portal export ({fmt})",
        "",
        f"Exported {timezone.now().isoformat()}; {sum(counts.values())} cells.",
        "",
        "## Filters",
        "",
    ]
    params = filters.as_params()
    lines += [f"- {k}: {v}" for k, v in params.items()] or ["- none"]
    lines += [
        "",
        "## Classes (14-Diff)",
        "",
        "| code | class | group | cells |",
        "|---|---|---|---|",
    ]
    for cls in CLASSES:
        lines.append(f"| {cls.code} | {cls.name} | {cls.group} | {counts.get(cls.code, 0)} |")
    if counts.get(""):
        lines.append(f"| (none) | unlabelled | | {counts['']} |")
    lines += ["", "## Files", "", files_doc, "", "## Provenance columns", "", PROVENANCE_DOC, ""]
    return "\n".join(lines)
