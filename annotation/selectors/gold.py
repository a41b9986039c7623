"""How readers and model versions do on the gold cells, per class and per scanner and
stain. Only active gold cells count; each is scored against its expert class."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet

from annotation.models import GoldCell, Label, ModelVersion, Prediction
from annotation.selectors.routing import routing_config_get
from mlworker.taxonomy import CODES

UNKNOWN = "unknown"
# Case metadata keys (any case) that name the scanner and the stain. Imports copy the
# columns of cases.csv into Case.metadata; the API lets clients set it when creating a case.
SCANNER_KEYS = ("scanner", "analyser", "analyzer", "instrument", "device")
STAIN_KEYS = ("stain", "staining")


@dataclass(frozen=True)
class _Gold:
    code: str
    scanner: str
    stain: str


def gold_cells_list() -> QuerySet[GoldCell]:
    """Active gold cells, newest first, with what the admin console shows."""
    return GoldCell.objects.filter(retired_at__isnull=True).select_related(
        "cell__case", "cell__current_label", "marked_by"
    )


def _metadata_value(metadata: Any, keys: Iterable[str]) -> str:
    if not isinstance(metadata, Mapping):
        return UNKNOWN
    lowered = {str(k).strip().lower(): v for k, v in metadata.items()}
    for key in keys:
        value = lowered.get(key)
        if value is not None and str(value).strip():
            return str(value).strip()
    return UNKNOWN


def _scores(pairs: list[tuple[str, str]], classes: list[str]) -> dict[str, Any]:
    """(given, expected) pairs -> n, correct, accuracy, balanced accuracy (mean TPR over
    the classes with cells), and per class n, correct and TPR (None without cells)."""
    per_class: dict[str, dict[str, Any]] = {code: {"n": 0, "correct": 0} for code in classes}
    for given, expected in pairs:
        row = per_class.setdefault(expected, {"n": 0, "correct": 0})
        row["n"] += 1
        row["correct"] += given == expected
    for row in per_class.values():
        row["tpr"] = row["correct"] / row["n"] if row["n"] else None
    n = len(pairs)
    correct = sum(row["correct"] for row in per_class.values())
    tprs = [row["tpr"] for row in per_class.values() if row["tpr"] is not None]
    return {
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else None,
        "balanced_accuracy": sum(tprs) / len(tprs) if tprs else None,
        "per_class": per_class,
    }


def _tables(
    reads: list[tuple[str, int, str]],
    predictions: list[tuple[int, int, str]],
    golds: Mapping[int, _Gold],
    versions: Mapping[int, ModelVersion],
    classes: list[str],
) -> dict[str, list[dict[str, Any]]]:
    by_reader: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for username, cell_id, code in reads:
        by_reader[username].append((code, golds[cell_id].code))
    by_version: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for version_id, cell_id, code in predictions:
        by_version[version_id].append((code, golds[cell_id].code))
    readers = []
    for username in sorted(by_reader):
        scores = _scores(by_reader[username], classes)
        del scores["balanced_accuracy"]
        readers.append({"user": username, **scores})
    models = [
        {
            "model_version": version_id,
            "name": versions[version_id].name,
            "status": versions[version_id].status,
            "active": versions[version_id].status == ModelVersion.Status.ACTIVE,
            **_scores(by_version[version_id], classes),
        }
        for version_id in sorted(by_version)
    ]
    return {"readers": readers, "models": models}


def _breakdown(
    attribute: str,
    reads: list[tuple[str, int, str]],
    predictions: list[tuple[int, int, str]],
    golds: Mapping[int, _Gold],
    versions: Mapping[int, ModelVersion],
    classes: list[str],
) -> dict[str, dict[str, Any]]:
    groups = sorted({getattr(g, attribute) for g in golds.values()})
    out = {}
    for group in groups:
        cells = {cid: g for cid, g in golds.items() if getattr(g, attribute) == group}
        out[group] = {
            "gold_cells": len(cells),
            **_tables(
                [r for r in reads if r[1] in cells],
                [p for p in predictions if p[1] in cells],
                cells,
                versions,
                classes,
            ),
        }
    return out


def gold_performance() -> dict[str, Any]:
    """Readers: every hematologist's reads of gold items (n, correct, accuracy, per gold
    class n, correct, TPR). Models: every version's predictions on the gold cells (the
    same, plus balanced accuracy). The same tables per scanner and per stain from the
    case metadata ("unknown" where it does not say). Classes are those of the active gold
    set; a TPR without cells is None, never 0."""
    golds = {
        cell_id: _Gold(
            code=code,
            scanner=_metadata_value(metadata, SCANNER_KEYS),
            stain=_metadata_value(metadata, STAIN_KEYS),
        )
        for cell_id, code, metadata in GoldCell.objects.filter(retired_at__isnull=True).values_list(
            "cell_id", "diff14", "cell__case__metadata"
        )
    }
    classes = [code for code in CODES if code in {g.code for g in golds.values()}]
    reads = list(
        Label.objects.filter(
            review_item__is_gold=True,
            annotator__isnull=False,
            cell__gold__isnull=False,
            cell__gold__retired_at__isnull=True,
        )
        .order_by("id")
        .values_list("annotator__username", "cell_id", "code")
    )
    predictions = list(
        Prediction.objects.filter(cell__gold__isnull=False, cell__gold__retired_at__isnull=True)
        .order_by("id")
        .values_list("model_version_id", "cell_id", "top_code")
    )
    versions = {
        v.pk: v
        for v in ModelVersion.objects.filter(
            pk__in={version_id for version_id, _, _ in predictions}
        ).only("id", "name", "status")
    }
    return {
        "gold_rate": routing_config_get().gold_rate,
        "gold_cells": len(golds),
        "classes": classes,
        **_tables(reads, predictions, golds, versions, classes),
        "by_scanner": _breakdown("scanner", reads, predictions, golds, versions, classes),
        "by_stain": _breakdown("stain", reads, predictions, golds, versions, classes),
    }
