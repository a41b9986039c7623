"""What a retraining job learns from and is judged on: the labelled cells and the fixed
evaluation set.

The evaluation set is chosen with the CLI's splitter (mlworker.train.splits), the case
standing in for the patient, so the product and ``python -m mlworker.train`` split by the
same rules: stratified by class, no case on both sides.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from annotation.models import CellImage, EvaluationSet

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


@dataclass(frozen=True)
class _Candidate:
    """One labelled cell as the splitter sees it (``mlworker.train.splits.Splittable``)."""

    cell_id: int
    code: str
    patient: str | None


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
    return {c.cell_id for c in held}


def evaluation_set_get_or_create(cells: list[LabelledCell]) -> EvaluationSet:
    """The fixed evaluation set: made once, stratified by class and grouped by case so no
    smear is on both sides; 30 % of the labelled cells at that time. Every later version is
    judged on these same cells, so versions stay comparable."""
    existing = EvaluationSet.objects.filter(name=EVALUATION_SET).first()
    if existing is not None:
        return existing
    chosen = _held_out_cell_ids(cells)
    counts = Counter(code for cell_id, _, code, _ in cells if cell_id in chosen)
    return EvaluationSet.objects.create(
        name=EVALUATION_SET, cell_ids=sorted(chosen), counts=dict(counts)
    )
