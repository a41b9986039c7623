"""Agreement between independent readers: Cohen's kappa per pair of annotators, Fleiss'
kappa overall, per class and per week, over the reads of double-read review items."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from itertools import combinations
from typing import Any

from sklearn.metrics import cohen_kappa_score

from annotation.models import Label
from mlworker.taxonomy import CODES


def cohen_kappa(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Kappa of two raters over the items both rated; None when chance agreement is 1
    (both always gave the same single class: kappa is undefined)."""
    codes = {code for pair in pairs for code in pair}
    # scikit-learn refuses no items and warns (then answers nan) on a single class: both
    # are "undefined" here, decided before asking it.
    if len(codes) < 2:
        return None
    first, second = zip(*pairs, strict=True)
    return float(cohen_kappa_score(first, second, labels=sorted(codes)))


def fleiss_kappa(items: Sequence[Counter[str]]) -> dict[str, Any]:
    """Fleiss' kappa for items rated by two or more raters each (the number of raters may
    vary per item). Returns {"kappa", "per_class": {code: kappa}, "n_items"}.

    Written out because scikit-learn has no Fleiss' kappa; statsmodels' ``fleiss_kappa``
    wants the same number of raters on every item, gives no per-class values, and is not
    a dependency."""
    rated = [c for c in items if sum(c.values()) >= 2]
    if not rated:
        return {"kappa": None, "per_class": {}, "n_items": 0}
    totals: Counter[str] = Counter()
    pair_weight = 0.0
    agreement = []
    for counts in rated:
        n_i = sum(counts.values())
        totals.update(counts)
        agreement.append(sum(k * (k - 1) for k in counts.values()) / (n_i * (n_i - 1)))
        pair_weight += n_i * (n_i - 1)
    all_ratings = sum(totals.values())
    p = {code: totals[code] / all_ratings for code in totals}
    p_bar = sum(agreement) / len(agreement)
    p_e = sum(v * v for v in p.values())
    kappa = None if p_e >= 1.0 else (p_bar - p_e) / (1.0 - p_e)
    per_class: dict[str, float | None] = {}
    for code, p_j in p.items():
        q_j = 1.0 - p_j
        if p_j * q_j == 0:
            per_class[code] = None
            continue
        disagreement = sum(c[code] * (sum(c.values()) - c[code]) for c in rated)
        per_class[code] = 1.0 - disagreement / (pair_weight * p_j * q_j)
    return {"kappa": kappa, "per_class": per_class, "n_items": len(rated)}


def agreement_summary() -> dict[str, Any]:
    """Every independent read, grouped by review item. Gold checks are one reader's
    answer against a reference, not agreement between readers: left out."""
    reads = (
        Label.objects.filter(
            review_item__isnull=False, review_item__is_gold=False, annotator__isnull=False
        )
        .values_list("review_item_id", "annotator__username", "code", "created_at")
        .order_by("review_item_id", "id")
    )
    by_item: dict[int, dict[str, str]] = defaultdict(dict)
    last_read: dict[int, Any] = {}
    for item_id, user, code, created in reads:
        by_item[item_id][user] = code  # a reader counts once per item (their last read)
        last_read[item_id] = created
    item_counts = {i: Counter(r.values()) for i, r in by_item.items()}

    pair_reads: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for readers in by_item.values():
        for a, b in combinations(sorted(readers), 2):
            pair_reads[(a, b)].append((readers[a], readers[b]))
    pairs = [
        {"a": a, "b": b, "n_items": len(v), "kappa": cohen_kappa(v)}
        for (a, b), v in sorted(pair_reads.items())
    ]

    weeks: dict[str, list[Counter[str]]] = defaultdict(list)
    for item_id, counts in item_counts.items():
        year, week, _ = last_read[item_id].isocalendar()
        weeks[f"{year}-W{week:02d}"].append(counts)
    overall = fleiss_kappa(list(item_counts.values()))
    return {
        "fleiss_kappa": overall["kappa"],
        "n_items": overall["n_items"],
        "per_class": {code: overall["per_class"].get(code) for code in CODES},
        # Items in which at least one reader chose the class: how much each class's kappa
        # rests on.
        "per_class_items": {
            code: sum(1 for counts in item_counts.values() if counts.get(code)) for code in CODES
        },
        "pairs": pairs,
        "by_week": [
            {"week": week, **{k: v for k, v in fleiss_kappa(items).items() if k != "per_class"}}
            for week, items in sorted(weeks.items())
        ],
    }
