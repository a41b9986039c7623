"""Rules that need no database: the promotion guard and the review-queue route reasons.

Services (which write) and selectors (which read) both apply these rules: promoting a
version and comparing two versions must judge a regression the same way, and queueing a
cell and handing out a gold cell must give the same reasons. Keeping the rules here, apart
from both, means a selector never imports a service to reuse one, and the rules can be
tested on plain objects. Nothing here queries: callers pass rows they have already read,
and only their plain attributes (metrics, TPRs, confidence, codes) are used.

The promotion guard reads the paired figures a training job records (mlworker/paired.py:
both versions scored on the same evaluation cells) and blocks only on drops that are
unlikely to be noise; see ``guard_comparison`` and mlworker/training.md.

See annotation/review_queue.md for how the reasons feed the queue.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from mlworker.paired import mcnemar_p
from mlworker.taxonomy import CODES

if TYPE_CHECKING:
    from annotation.models import ModelVersion, Prediction, RoutingConfig

# --- the promotion guard -----------------------------------------------------------------

# Without paired figures (versions from before they were recorded): a candidate is promoted
# automatically only if balanced accuracy does not drop and no class's TPR drops by more
# than this. With paired figures a drop must also be larger than this to block: a
# significant but tiny drop on a large class is not worth holding a better model back.
MAX_CLASS_TPR_DROP = 0.05
# A drop on paired figures blocks only when the one-sided exact McNemar test on the
# discordant cells says it is this unlikely to be noise.
PAIRED_P_THRESHOLD = 0.05
# Fewer evaluation cells of a class than this and the guard does not judge the class.
# The exact test cannot reach p < 0.05 with fewer than 5 discordant cells (0.5**5 = 0.031),
# so below 5 cells nothing could ever block; at 10 a block needs at least half the class to
# flip one way, and a TPR is resolved to 10 points rather than 50 (the demo's "2/2 -> 0/2").
MIN_CLASS_N_TO_JUDGE = 10


def per_class_tpr(metrics: dict[str, Any]) -> dict[str, float | None]:
    """Each class's TPR from a metrics dict (``metrics["per_class"][code]["tpr"]``)."""
    return {code: row.get("tpr") for code, row in (metrics.get("per_class") or {}).items()}


def paired_figures(candidate: ModelVersion, active: ModelVersion) -> dict[str, Any] | None:
    """The candidate's paired table against ``active`` (mlworker.paired.paired_table, as
    the training job recorded it), or None: recorded before paired figures existed, or
    against another version than ``active`` (one promoted or rolled back to meanwhile)."""
    paired = (candidate.metrics or {}).get("paired_on_evaluation_set")
    if not paired or paired.get("active_version_id") != getattr(active, "pk", None):
        return None
    return paired  # type: ignore[no-any-return]


def format_p(p: float) -> str:
    """A p-value as a person reads it: two decimals, more only when it is small."""
    if p < 0.001:
        return "< 0.001"
    return f"= {p:.3f}" if p < 0.01 else f"= {p:.2f}"


def _cannot_judge(unjudged: list[dict[str, Any]]) -> str:
    if not unjudged:
        return ""
    return "cannot judge: " + ", ".join(f"{u['code']} (n={u['n']})" for u in unjudged)


def guard_comparison(candidate: ModelVersion, active: ModelVersion | None) -> dict[str, Any]:
    """The promotion guard on the shared evaluation set: candidate vs active.

    ``passes`` is true when ``reasons`` (what blocks) is empty. With paired figures (both
    versions scored on the same evaluation cells, recorded by the training job) a drop
    blocks only when it is unlikely to be noise:

    - a class blocks when its TPR drops by more than ``MAX_CLASS_TPR_DROP``, it has at
      least ``MIN_CLASS_N_TO_JUDGE`` evaluation cells, and the one-sided exact McNemar test
      on its discordant cells gives p < ``PAIRED_P_THRESHOLD`` ("PR TPR 14/20 -> 9/20,
      p = 0.03"). Classes with fewer cells are listed in ``unjudged`` and never block.
    - an evaluation set of fewer than ``MIN_CLASS_N_TO_JUDGE`` cells in all judges nothing,
      so it blocks (an admin may force).
    - balanced accuracy keeps its rule "must not drop", with the same paired test over all
      evaluation cells: a drop blocks only when the candidate is also significantly worse
      on the cells as a whole. Balanced accuracy is a mean of per-class TPRs and has no
      exact paired test of its own; a class that drives its drop is judged by the per-class
      rule, so the overall test only has to stop a candidate that is worse across the board.

    Without paired figures (versions from before, or figures against another active
    version) the old rule applies unchanged (``basis: "tpr"``): balanced accuracy must not
    drop, no class TPR may drop by more than ``MAX_CLASS_TPR_DROP``.
    """
    if active is None:
        return {
            "passes": True,
            "reasons": ["no active version"],
            "basis": "none",
            "per_class": [],
            "unjudged": [],
            "cannot_judge": "",
        }
    cand = candidate.metrics.get("evaluation_set") or candidate.metrics
    act = (candidate.metrics.get("active_on_evaluation_set") or active.metrics) or {}
    cb, ab = cand.get("balanced_accuracy"), act.get("balanced_accuracy")
    paired = paired_figures(candidate, active)
    if paired is None:
        return _guard_on_tprs(cand, act, cb, ab)
    reasons = []
    balanced: dict[str, Any] = {"candidate": cb, "active": ab}
    overall = _paired_row("all cells", paired)
    balanced["paired"] = overall
    if cb is None or ab is None:
        reasons.append("balanced accuracy missing for one of the versions")
    elif not overall["judged"]:
        # Nothing on so few cells is unlikely to be noise, a collapse included: an admin
        # decides (force) until the evaluation set has grown.
        reasons.append(
            f"the evaluation set has {overall['n']} cells, too few to judge "
            f"(at least {MIN_CLASS_N_TO_JUDGE})"
        )
    elif cb < ab and overall["judged"] and overall["p"] < PAIRED_P_THRESHOLD:
        reasons.append(
            f"balanced accuracy drops from {ab:.3f} to {cb:.3f} (all cells "
            f"{overall['active_hits']}/{overall['n']} -> {overall['candidate_hits']}/"
            f"{overall['n']}, p {format_p(overall['p'])})"
        )
    rows: list[dict[str, Any]] = []
    unjudged: list[dict[str, Any]] = []
    drops: dict[str, dict[str, float | None]] = {}
    for code, counts in (paired.get("per_class") or {}).items():
        row = _paired_row(code, counts)
        rows.append(row)
        if not row["judged"]:
            unjudged.append({"code": code, "n": row["n"]})
        elif row["blocks"]:
            n = row["n"]
            drops[code] = {"active": row["active_tpr"], "candidate": row["candidate_tpr"]}
            reasons.append(
                f"{code} TPR {row['active_hits']}/{n} -> {row['candidate_hits']}/{n}, "
                f"p {format_p(row['p'])}"
            )
    return {
        "passes": not reasons,
        "reasons": reasons,
        "basis": "paired",
        "balanced_accuracy": balanced,
        "class_drops": drops,
        "per_class": rows,
        "unjudged": unjudged,
        "cannot_judge": _cannot_judge(unjudged),
        "min_n": MIN_CLASS_N_TO_JUDGE,
    }


def _paired_row(code: str, counts: dict[str, Any]) -> dict[str, Any]:
    """One row of the paired table with its TPRs, test and verdict."""
    n = int(counts.get("n") or 0)
    active_hits, candidate_hits = int(counts["active_hits"]), int(counts["candidate_hits"])
    judged = n >= MIN_CLASS_N_TO_JUDGE
    p = mcnemar_p(int(counts["active_only"]), int(counts["candidate_only"])) if judged else None
    active_tpr = active_hits / n if n else None
    candidate_tpr = candidate_hits / n if n else None
    drop = (active_hits - candidate_hits) / n if n else 0.0
    return {
        "code": code,
        "n": n,
        "active_hits": active_hits,
        "candidate_hits": candidate_hits,
        "active_only": int(counts["active_only"]),
        "candidate_only": int(counts["candidate_only"]),
        "active_tpr": active_tpr,
        "candidate_tpr": candidate_tpr,
        "judged": judged,
        "p": p,
        "blocks": bool(
            judged and p is not None and drop > MAX_CLASS_TPR_DROP and p < PAIRED_P_THRESHOLD
        ),
    }


def _guard_on_tprs(
    cand: dict[str, Any], act: dict[str, Any], cb: float | None, ab: float | None
) -> dict[str, Any]:
    """The rule for versions without paired figures: any drop beyond the margin blocks,
    however few cells stand behind it."""
    reasons = []
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
        "basis": "tpr",
        "balanced_accuracy": {"candidate": cb, "active": ab},
        "class_drops": drops,
        "per_class": [],
        "unjudged": [],
        "cannot_judge": "",
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
