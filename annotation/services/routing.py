"""Which cells go to the review queue and in what order. See review_queue.md.

Why a cell is queued (the route reasons, weak classes) is a rule without database access
in annotation/rules.py; the settings row is read by annotation/selectors/routing.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from annotation.errors import ApplicationError
from annotation.models import ModelVersion, Prediction, ReviewItem, RoutingConfig
from annotation.rules import REASONS, route_reasons, weak_classes
from annotation.selectors.routing import routing_config_get
from annotation.services.audit import audit_event_create, fields_state
from annotation.services.events import queue_changed_on_commit
from annotation.types import UserLike
from mlworker import active_learning
from mlworker.taxonomy import ABNORMAL_CODES

_LIMITS: dict[str, tuple[float, float]] = {
    "confidence_threshold": (0.0, 1.0),
    "weak_class_tpr": (0.0, 1.0),
    "audit_rate": (0.0, 1.0),
    "lease_seconds": (30, 24 * 3600),
    "retrain_min_new_labels": (1, 10_000_000),
    "retrain_every_labels": (0, 10_000_000),
    "labels_required_abnormal": (1, 5),
    "gold_rate": (0.0, 0.5),
}


@transaction.atomic
def routing_config_update(*, user: UserLike | None, **fields: Any) -> RoutingConfig:
    config = RoutingConfig.objects.select_for_update().get(pk=routing_config_get().pk)
    before = fields_state(config, (*_LIMITS, "strategy"))
    errors: dict[str, str] = {}
    for name, value in fields.items():
        if name == "strategy":
            if value not in active_learning.STRATEGIES:
                errors[name] = f"choose one of {', '.join(active_learning.STRATEGIES)}"
            continue
        if name not in _LIMITS:
            errors[name] = "not a routing setting"
            continue
        low, high = _LIMITS[name]
        if not isinstance(value, int | float) or not low <= value <= high:
            errors[name] = f"must be a number from {low} to {high}"
    if errors:
        raise ApplicationError(
            "Routing settings not changed: " + "; ".join(f"{k} {v}" for k, v in errors.items()),
            fields=errors,
        )
    for name, value in fields.items():
        setattr(config, name, value)
    config.updated_by = user
    config.save()
    audit_event_create(
        actor=user,
        action="routing.update",
        target_type="routing_config",
        target_id=config.pk,
        before=before,
        after=fields_state(config, before),
    )
    return config


def labels_required(prediction: Prediction, config: RoutingConfig) -> int:
    """Independent reads a queued cell needs: the case's setting, or the abnormal-class
    setting when the model predicts an abnormal class, whichever is higher."""
    required = prediction.cell.case.labels_required
    if prediction.top_code in ABNORMAL_CODES:
        required = max(required, config.labels_required_abnormal)
    return max(1, required)


def _priorities(
    predictions: Sequence[Prediction], strategy: str, weak: set[str], codes: Sequence[str]
) -> list[float]:
    """Priority in 0..1 from the strategy's order (1 = first)."""
    if not predictions:
        return []
    probs = np.array([p.probabilities for p in predictions], dtype=np.float64)
    weak_mask = np.array([c in weak for c in codes])
    features = None
    if strategy in {"kcenter", "default"}:
        vectors = [bytes(p.features) for p in predictions if p.features is not None]
        if len(vectors) == len(predictions):
            features = np.stack([np.frombuffer(v, dtype=np.float16) for v in vectors])
            features = features.astype(np.float32)
        elif strategy == "kcenter":
            strategy = "margin"
    ranking = active_learning.order(
        strategy,
        probs,
        features=features,
        weak=weak_mask,
        budget=min(len(predictions), 256),
        rng=np.random.default_rng(0),
    )
    n = len(ranking)
    priority = [0.0] * n
    for rank, index in enumerate(ranking):
        priority[index] = 1.0 - rank / n
    return priority


def cells_route(*, cell_ids: Sequence[int], version: ModelVersion) -> dict[str, int]:
    """Queue the cells that need a person, by the active version's predictions.

    Cells with a current label are not queued (a person or the analyser already said
    what they are), except conflicts, which always need a person. An open item is
    updated in place (reasons, priority), so routing twice creates nothing new.
    """
    config = routing_config_get()
    weak = weak_classes(version, config.weak_class_tpr)
    predictions = list(
        Prediction.objects.filter(model_version=version, cell_id__in=cell_ids)
        .select_related("cell")
        .filter(Q(cell__current_label__isnull=True) | Q(cell__has_label_conflict=True))
    )
    routed: list[tuple[Prediction, list[str]]] = []
    for prediction in predictions:
        reasons = route_reasons(
            prediction=prediction,
            config=config,
            weak=weak,
            has_conflict=prediction.cell.has_label_conflict,
        )
        if reasons:
            routed.append((prediction, reasons))
    priorities = _priorities([p for p, _ in routed], config.strategy, weak, version.class_codes)
    created = updated = 0
    with transaction.atomic():
        open_items = {
            item.cell_id: item
            for item in ReviewItem.objects.select_for_update().filter(
                cell_id__in=[p.cell_id for p, _ in routed],
                status__in=[ReviewItem.Status.QUEUED, ReviewItem.Status.LEASED],
            )
        }
        new_items = []
        for (prediction, reasons), priority in zip(routed, priorities, strict=True):
            item = open_items.get(prediction.cell_id)
            if item is None:
                new_items.append(
                    ReviewItem(
                        cell_id=prediction.cell_id,
                        reasons=reasons,
                        priority=priority,
                        model_version=version,
                        labels_required=labels_required(prediction, config),
                    )
                )
            else:
                item.reasons = sorted(set(item.reasons) | set(reasons), key=REASONS.index)
                item.priority = priority
                item.model_version = version
                item.save(update_fields=["reasons", "priority", "model_version"])
                updated += 1
        ReviewItem.objects.bulk_create(new_items, ignore_conflicts=True)
        created = len(new_items)
        queue_changed_on_commit()
    return {"created": created, "updated": updated, "considered": len(predictions)}


def review_queue_reset_for_new_version() -> int:
    """A new version is active: queued items routed by the old one are cancelled, and
    re-scoring routes every unlabelled cell again with the new predictions. Items someone
    holds (leased), items already read once (double reading in progress) and items
    awaiting adjudication stay."""
    cancelled = (
        ReviewItem.objects.filter(status=ReviewItem.Status.QUEUED, reads__isnull=True)
        .distinct()
        .update(status=ReviewItem.Status.CANCELLED, closed_at=timezone.now())
    )
    if cancelled:
        queue_changed_on_commit()
    return cancelled
