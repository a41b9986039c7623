from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from annotation.errors import ApplicationError, get_or_404
from annotation.models import ModelVersion
from annotation.rules import guard_comparison, paired_figures, per_class_tpr


def model_version_list(*, status: str | None = None) -> QuerySet[ModelVersion]:
    """Versions newest first, without their bulky metrics and training snapshot."""
    qs = ModelVersion.objects.defer("metrics", "training_snapshot").order_by("-created_at", "-id")
    return qs if status is None else qs.filter(status=status)


def model_version_get(*, version_id: int) -> ModelVersion:
    return get_or_404(ModelVersion, what="Model version", pk=version_id)


def model_version_compare(*, a_id: int, b_id: int) -> dict[str, Any]:
    """Per-class TPR of two versions side by side, and whether ``b`` would pass the
    promotion guard against ``a``.

    When ``b`` was trained while ``a`` was active, both were scored on the same evaluation
    cells: ``paired_b_over_a`` has those counts (n, hits of each, discordant cells; see
    mlworker/paired.py) and each class row its ``n``, so a TPR is never shown without the
    number of cells behind it. Otherwise both are null."""
    versions = {v.pk: v for v in ModelVersion.objects.filter(pk__in=[a_id, b_id])}
    missing = [str(i) for i in (a_id, b_id) if i not in versions]
    if missing:
        raise ApplicationError(
            f"Model version(s) {', '.join(missing)} do not exist.", code="not_found", status=404
        )
    a, b = versions[a_id], versions[b_id]
    tpr_a, tpr_b = per_class_tpr(a.metrics), per_class_tpr(b.metrics)
    paired = paired_figures(b, a)
    paired_n = {code: row["n"] for code, row in (paired or {}).get("per_class", {}).items()}
    codes = list(dict.fromkeys([*a.class_codes, *b.class_codes]))
    return {
        "a": {"id": a.pk, "name": a.name, "status": a.status},
        "b": {"id": b.pk, "name": b.name, "status": b.status},
        "balanced_accuracy": {
            "a": a.metrics.get("balanced_accuracy"),
            "b": b.metrics.get("balanced_accuracy"),
        },
        "per_class_tpr": {
            code: {
                "a": tpr_a.get(code),
                "b": tpr_b.get(code),
                "delta": (
                    None
                    if tpr_a.get(code) is None or tpr_b.get(code) is None
                    else tpr_b[code] - tpr_a[code]  # type: ignore[operator]
                ),
                "n": paired_n.get(code, 0) if paired is not None else None,
            }
            for code in codes
        },
        "paired_b_over_a": paired,
        "guard_b_over_a": guard_comparison(b, a),
    }
