"""What a retraining job learns from and is judged on: the labelled cells and the fixed
evaluation set.

The evaluation set is chosen with the CLI's splitter (mlworker.train.splits), the case
standing in for the patient, so the product and ``python -m mlworker.train`` split by the
same rules: stratified by class, no case on both sides. Where whole cases cannot give a
class cells on both sides (a class labelled in one case only), that class alone is split
cell by cell: an evaluation set that cannot judge a class is worse than one case on both
sides for a few cells of it.

Once stored the set is never remade (every version is judged on the same cells), but it
grows with cells no version was ever trained on: active gold cells, all of them, and a
share (``EVALUATION_FRACTION``, stratified by class) of the cells adjudicated since the
last training job. See mlworker/training.md ("The product's evaluation set").
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Min

from annotation.models import CellImage, EvaluationSet, Label, ModelVersion
from annotation.rules import MIN_CLASS_N_TO_JUDGE

logger = logging.getLogger(__name__)

EVALUATION_SET = "fixed-validation"
EVALUATION_FRACTION = 0.3
# Below this many cases a case-disjoint split cannot also be stratified (a 30 % share of
# three cases is one case, with whatever classes it happens to hold): cells are then held
# out one by one within each class.
MIN_CASES_TO_GROUP = 4
EVALUATION_SEED = 0

LabelledCell = tuple[int, str, str, int]  # (cell id, storage name, 14-Diff code, case id)


def labelled_cells() -> list[LabelledCell]:
    """(cell id, storage name, 14-Diff code, case id) for every cell whose current label
    counts for training: latest label per cell; unresolved conflicts left out, and active
    gold cells too: they measure every model version, which a version trained on them
    would pass by memory."""
    rows = (
        CellImage.objects.filter(current_label__isnull=False, has_label_conflict=False)
        .exclude(processing=CellImage.Processing.FAILED)
        .exclude(gold__retired_at__isnull=True, gold__isnull=False)
        .values_list("id", "image", "current_label__code", "case_id")
        .order_by("id")
    )
    return list(rows)


def gold_cells() -> list[LabelledCell]:
    """The active gold cells, with the expert's reference class as their code. Never
    trained on (``labelled_cells`` leaves them out), so they can judge every version."""
    rows = (
        CellImage.objects.filter(gold__isnull=False, gold__retired_at__isnull=True)
        .exclude(processing=CellImage.Processing.FAILED)
        .values_list("id", "image", "gold__diff14", "case_id")
        .order_by("id")
    )
    return list(rows)


@dataclass(frozen=True)
class _Candidate:
    """One labelled cell as the splitter sees it (``mlworker.train.splits.Splittable``)."""

    cell_id: int
    code: str
    patient: str | None


def _cover_every_class(
    candidates: list[_Candidate], held: set[int], fraction: float, seed: int
) -> set[int]:
    """Split cell by cell each class that whole cases left on one side only.

    The grouped split places whole cases; a class labelled in one case only then lies
    wholly on one side, and the evaluation set cannot judge it (or training never sees
    it). Such a class, if it has two cells or more, gets its share held out within the
    case: those cases then have cells on both sides, the price of judging the class.
    """
    from mlworker.train.splits import split_train_val

    by_class: dict[str, list[_Candidate]] = defaultdict(list)
    for c in candidates:
        by_class[c.code].append(c)
    held = set(held)
    for code, members in sorted(by_class.items()):
        n_held = sum(c.cell_id in held for c in members)
        if len(members) < 2 or 0 < n_held < len(members):
            continue
        ungrouped = [_Candidate(c.cell_id, c.code, None) for c in members]
        _, chosen = split_train_val(ungrouped, fraction, seed)
        held -= {c.cell_id for c in members}
        held |= {c.cell_id for c in chosen}
        logger.warning(
            "%s: whole cases put all %d cells on one side; %d held out cell by cell",
            code,
            len(members),
            len(chosen),
        )
    return held


def _held_out_cell_ids(cells: list[LabelledCell]) -> set[int]:
    # Imported here: mlworker.train loads torch, which the web process never needs.
    from mlworker.train.splits import split_train_val

    cases = {case_id for _, _, _, case_id in cells}
    group = len(cases) >= MIN_CASES_TO_GROUP
    candidates = [
        _Candidate(cell_id, code, str(case_id) if group and case_id is not None else None)
        for cell_id, _, code, case_id in cells
    ]
    train, held = split_train_val(candidates, EVALUATION_FRACTION, EVALUATION_SEED)
    if group and (not train or not held):
        # Whole cases could not give both sides (e.g. every case holds a single class):
        # a job needs both, so fall back to holding out cells one by one.
        logger.warning(
            "no case-disjoint evaluation set fits %d cases; holding out cells within each class",
            len(cases),
        )
        ungrouped = [_Candidate(c.cell_id, c.code, None) for c in candidates]
        _, held = split_train_val(ungrouped, EVALUATION_FRACTION, EVALUATION_SEED)
    return _cover_every_class(
        candidates, {c.cell_id for c in held}, EVALUATION_FRACTION, EVALUATION_SEED
    )


def _counts(cell_ids: Iterable[int], cells: list[LabelledCell]) -> dict[str, int]:
    """Cells of the set per class; 0 for a class with labels but no cell in the set, so
    the set says which classes it cannot judge (``evaluation_set_unjudged``)."""
    chosen = set(cell_ids)
    counts = Counter(code for cell_id, _, code, _ in cells if cell_id in chosen)
    return {code: counts[code] for code in sorted({code for _, _, code, _ in cells})}


def evaluation_set_unjudged(evaluation: EvaluationSet) -> dict[str, int]:
    """Classes with labels of which the set holds too few cells for the promotion guard
    to judge (fewer than ``MIN_CLASS_N_TO_JUDGE``), with how many it holds."""
    return {code: n for code, n in evaluation.counts.items() if n < MIN_CLASS_N_TO_JUDGE}


def _never_trained_adjudicated(cells: list[LabelledCell]) -> list[LabelledCell]:
    """The cells whose label is adjudicated and whose every label came after the newest
    training snapshot: no version has learnt from them (in the set or not)."""
    snapshots = ModelVersion.objects.exclude(training_snapshot={}).values_list(
        "training_snapshot", flat=True
    )
    seen = max(
        (int(s["max_label_id"]) for s in snapshots if s.get("max_label_id") is not None),
        default=0,
    )
    adjudicated = set(
        CellImage.objects.filter(current_label__source=Label.Source.ADJUDICATED)
        .annotate(first_label=Min("labels__id"))
        .filter(first_label__gt=seen)
        .values_list("id", flat=True)
    )
    return [cell for cell in cells if cell[0] in adjudicated]


def _rank(cell_id: int) -> bytes:
    # A fixed draw per cell, as the audit draw: asking again, or with more cells, never
    # re-rolls the cells already drawn.
    return hashlib.sha256(f"evaluation:{EVALUATION_SEED}:{cell_id}".encode()).digest()


def _cells_to_join(
    evaluation: EvaluationSet, cells: list[LabelledCell], gold: list[LabelledCell]
) -> set[int]:
    """Every gold cell, and of the never-trained adjudicated cells a share per class
    (``EVALUATION_FRACTION``, at least one of two or more, never all): the first in a fixed
    order per cell, so the choice is the same however often it is made before a job
    trains on the rest."""
    by_class: dict[str, list[int]] = defaultdict(list)
    for cell_id, _, code, _ in _never_trained_adjudicated(cells):
        by_class[code].append(cell_id)
    chosen = {cell_id for cell_id, _, _, _ in gold}
    for members in by_class.values():
        n = len(members)
        k = min(max(round(n * EVALUATION_FRACTION), 1), n - 1) if n >= 2 else 0
        chosen |= set(sorted(members, key=_rank)[:k])
    return chosen - set(evaluation.cell_ids)


def evaluation_set_get_or_create(
    cells: list[LabelledCell], *, gold: list[LabelledCell] | None = None
) -> EvaluationSet:
    """The fixed evaluation set every version is judged on, so versions stay comparable.

    Made once: stratified by class and grouped by case so no smear is on both sides,
    except for a class whole cases cannot put on both sides (split cell by cell); 30 % of
    the labelled cells at that time, plus every active gold cell (``gold``, read here when
    not given). Later calls never remove or move a stored cell; only cells no version was
    trained on join: new gold cells, and a 30 % share of the cells adjudicated since the
    last training job. ``counts`` then gives the set as it now stands, per class with
    labels (0: the set cannot judge that class).
    """
    gold = gold_cells() if gold is None else gold
    labelled = {cell_id for cell_id, _, _, _ in cells}
    every = cells + [g for g in gold if g[0] not in labelled]
    # Locked: two jobs cannot run at once, but an admin's job and a retry could both
    # reach here; neither may add to a set the other is extending.
    with transaction.atomic():
        existing = EvaluationSet.objects.select_for_update().filter(name=EVALUATION_SET).first()
        if existing is None:
            chosen = _held_out_cell_ids(cells) | {cell_id for cell_id, _, _, _ in gold}
            return EvaluationSet.objects.create(
                name=EVALUATION_SET, cell_ids=sorted(chosen), counts=_counts(chosen, every)
            )
        joining = _cells_to_join(existing, cells, gold)
        if joining:
            logger.info("%d never-trained cells join the evaluation set", len(joining))
            existing.cell_ids = sorted(set(existing.cell_ids) | joining)
            existing.counts = _counts(existing.cell_ids, every)
            existing.save(update_fields=["cell_ids", "counts"])
        return existing
