"""The fixed evaluation set: it covers every class that has labels, says which it cannot
judge, and grows only with cells no version was trained on (gold, newly adjudicated)."""

from __future__ import annotations

import pytest

from annotation.models import Case, CellImage, EvaluationSet, Label, ModelVersion
from annotation.rules import MIN_CLASS_N_TO_JUDGE
from annotation.services.gold import gold_cell_mark
from annotation.services.labels import cell_label_create
from annotation.services.training.dataset import (
    evaluation_set_get_or_create,
    evaluation_set_unjudged,
    labelled_cells,
)
from annotation.services.users import user_create_with_role

pytestmark = pytest.mark.django_db


def _cells(case: Case, codes: dict[str, int], source: str = "imported") -> list[int]:
    """Cells of one case with a current label, ``codes`` giving cells per class."""
    ids = []
    for code, n in codes.items():
        for _ in range(n):
            i = CellImage.objects.count()
            cell = CellImage.objects.create(
                case=case, image=f"c/{i}.jpg", sha256=f"{i:064x}", width=1, height=1
            )
            label = Label.objects.create(cell=cell, code=code, source=source)
            CellImage.objects.filter(pk=cell.pk).update(current_label=label)
            ids.append(cell.pk)
    return ids


def test_a_class_labelled_in_one_case_only_is_still_held_out_in_part() -> None:
    for i in range(6):
        _cells(Case.objects.create(accession_id=f"E{i}"), {"NE": 6, "LY": 3})
    rare = _cells(Case.objects.create(accession_id="rare"), {"NE": 2, "AR": 5})
    _cells(Case.objects.create(accession_id="single"), {"NE": 4, "BL": 1})
    cells = labelled_cells()
    evaluation = evaluation_set_get_or_create(cells)
    held = set(evaluation.cell_ids)
    code_of = {cell_id: code for cell_id, _, code, _ in cells}
    ar = [c for c in rare if code_of[c] == "AR"]
    # AR is in the evaluation set and in training both, cell by cell within its case.
    assert 0 < len(held & set(ar)) < len(ar)
    assert evaluation.counts["AR"] == len(held & set(ar))
    # The other classes stay case-disjoint: whole cases on one side.
    case_of = {cell_id: case_id for cell_id, _, _, case_id in cells}
    split_cases = {case_of[c] for c in held} & {case_of[c] for c in case_of if c not in held}
    assert split_cases <= {case_of[rare[0]]}
    # A single BL cell cannot be on both sides: it trains, and the set says it lacks BL.
    assert evaluation.counts["BL"] == 0
    unjudged = evaluation_set_unjudged(evaluation)
    assert unjudged["BL"] == 0 and unjudged["AR"] == evaluation.counts["AR"]
    assert all(n < MIN_CLASS_N_TO_JUDGE for n in unjudged.values())
    assert sum(evaluation.counts.values()) == len(held)


def test_gold_and_newly_adjudicated_cells_join_a_stored_set_without_moving_it() -> None:
    case = Case.objects.create(accession_id="only")
    _cells(case, {"NE": 10, "LY": 4})
    evaluation = evaluation_set_get_or_create(labelled_cells())
    held = list(evaluation.cell_ids)
    # A job trained on everything labelled so far.
    seen = Label.objects.order_by("-id").values_list("id", flat=True).first()
    ModelVersion.objects.create(
        name="v1", arch="resnet18", training_snapshot={"max_label_id": seen}
    )
    trained = next(c for c in CellImage.objects.values_list("id", flat=True) if c not in held)
    senior = user_create_with_role(
        username="s", password="Long-pass-123", role="senior_hematologist"
    )
    # Adjudicating a cell the version learnt from does not make it unseen.
    cell_label_create(cell_id=trained, code="MO", annotator=senior, source="adjudicated")
    fresh = []
    for i in range(4):
        cell = CellImage.objects.create(
            case=case, image=f"n/{i}.jpg", sha256=f"{1000 + i:064x}", width=1, height=1
        )
        cell_label_create(cell_id=cell.pk, code="EO", annotator=senior, source="adjudicated")
        fresh.append(cell.pk)
    plain = _cells(case, {"EO": 3}, source="imported")  # new, but not adjudicated
    gold = CellImage.objects.create(
        case=case, image="g/0.jpg", sha256=f"{2000:064x}", width=1, height=1
    )
    gold_cell_mark(user=None, cell_id=gold.pk, diff14="PC")

    grown = evaluation_set_get_or_create(labelled_cells())
    assert grown.pk == evaluation.pk and EvaluationSet.objects.count() == 1
    now = set(grown.cell_ids)
    assert set(held) <= now  # nothing stored moves
    assert gold.pk in now and grown.counts["PC"] == 1
    assert len(now & set(fresh)) == 1  # 30 % of 4 new adjudicated EO cells, at least one
    assert trained not in now and not now & set(plain)
    # Asked again, nothing new: the same set.
    assert set(evaluation_set_get_or_create(labelled_cells()).cell_ids) == now
