"""Rules that need no database: the promotion guard and the review-queue route reasons.

Services (which write) and selectors (which read) both apply these rules: promoting a
version and comparing two versions must judge a regression the same way, and queueing a
cell and handing out a gold cell must give the same reasons. Keeping the rules here, apart
from both, means a selector never imports a service to reuse one, and the rules can be
tested on plain objects. Nothing here queries: callers pass rows they have already read,
and only their plain attributes (metrics, TPRs, confidence, codes) are used.

See annotation/review_queue.md for how the reasons feed the queue.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from mlworker.taxonomy import CODES

if TYPE_CHECKING:
    from annotation.models import ModelVersion, Prediction, RoutingConfig

# --- the promotion guard -----------------------------------------------------------------

# A candidate is promoted automatically only if balanced accuracy does not drop and no
# class's TPR drops by more than this.
MAX_CLASS_TPR_DROP = 0.05


def per_class_tpr(metrics: dict[str, Any]) -> dict[str, float | None]:
    """Each class's TPR from a metrics dict (``metrics["per_class"][code]["tpr"]``)."""
    return {code: row.get("tpr") for code, row in (metrics.get("per_class") or {}).items()}


def guard_comparison(candidate: ModelVersion, active: ModelVersion | None) -> dict[str, Any]:
    """The promotion guard on the shared evaluation set: candidate vs active."""
    if active is None:
        return {"passes": True, "reasons": ["no active version"]}
    cand = candidate.metrics.get("evaluation_set") or candidate.metrics
    act = (candidate.metrics.get("active_on_evaluation_set") or active.metrics) or {}
    reasons = []
    cb, ab = cand.get("balanced_accuracy"), act.get("balanced_accuracy")
    if cb is None or ab is None:
        reasons.append("balanced accuracy missing for one of the versions")
    elif cb < ab:
        reasons.append(f"balanced accuracy drops from {ab:.3f} to {cb:.3f}")
    drops = {}
    ctpr, atpr = per_class_tpr(cand), per_class_tpr(act)
    for code, before in atpr.items():
        after = ctpr.get(code)
        if before is not None and after is not None and before - after > MAX_CLASS_TPR_DROP:
            drops[code] = {"active": before, "candidate": after}
            reasons.append(f"{code} TPR drops from {before:.2f} to {after:.2f}")
    return {
        "passes": not reasons,
        "reasons": reasons,
        "balanced_accuracy": {"candidate": cb, "active": ab},
        "class_drops": drops,
    }


# --- why a cell goes to the review queue ---------------------------------------------------

LOW_CONFIDENCE = "low_confidence"
WEAK_CLASS = "weak_class"
DISAGREEMENT = "disagreement"
AUDIT = "audit"
REASONS = (LOW_CONFIDENCE, WEAK_CLASS, DISAGREEMENT, AUDIT)

# The reasons in words, for the browser UI (annotation/views.py hands them over).
REASON_TEXT = {
    LOW_CONFIDENCE: "Low confidence: the model is not sure",
    WEAK_CLASS: "Predicted class is one the model is weak at",
    DISAGREEMENT: "Sources or annotators disagree",
    AUDIT: "Random audit of a confident cell",
}


def weak_classes(version: ModelVersion, tpr_threshold: float) -> set[str]:
    """Classes whose validation TPR is below the threshold. A class the version was never
    validated on (TPR unknown) counts as weak: nobody has shown the model gets it right."""
    weak = set()
    codes: Iterable[str] = version.class_codes or CODES
    for code in codes:
        tpr = (version.per_class_tpr or {}).get(code)
        if tpr is None or tpr < tpr_threshold:
            weak.add(code)
    return weak


def audit_draw(cell_id: int, version_id: int) -> float:
    """A reproducible uniform draw per (cell, version): re-routing never re-rolls it."""
    digest = hashlib.sha256(f"audit:{cell_id}:{version_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def route_reasons(
    *,
    prediction: Prediction,
    config: RoutingConfig,
    weak: set[str],
    has_conflict: bool,
) -> list[str]:
    """Why a cell with this prediction needs a person (empty: it does not). A confident,
    undisputed cell still goes, as an audit, with probability ``config.audit_rate``."""
    reasons = []
    if prediction.confidence < config.confidence_threshold:
        reasons.append(LOW_CONFIDENCE)
    if prediction.top_code in weak:
        reasons.append(WEAK_CLASS)
    if has_conflict:
        reasons.append(DISAGREEMENT)
    if (
        not reasons
        and audit_draw(prediction.cell_id, prediction.model_version_id) < config.audit_rate
    ):
        reasons.append(AUDIT)
    return reasons
