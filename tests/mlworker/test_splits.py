"""The one splitter (mlworker.train.splits) the CLI and the product's evaluation set share:
stratified by class, patient-disjoint where patients are known, two or three ways."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from mlworker.train.splits import split_train_val, split_train_val_test

CODES = ("NE", "LY", "MO", "EO", "BA")


@dataclass(frozen=True)
class Cell:
    """Not an mlworker Sample: anything with a code and a patient can be split."""

    id: int
    code: str
    patient: str | None


def cohort(n_patients: int = 40, seed: int = 0) -> list[Cell]:
    """Patients with uneven numbers of cells and classes, as on real smears."""
    rng = random.Random(seed)
    cells: list[Cell] = []
    for p in range(n_patients):
        for code in CODES:
            for _ in range(rng.randint(0 if code in ("EO", "BA") else 1, 6)):
                cells.append(Cell(len(cells), code, f"p{p}"))
    return cells


def test_any_object_with_code_and_patient_is_split_patient_disjoint() -> None:
    cells = cohort()
    train, val = split_train_val(cells, 0.3, seed=0)
    assert sorted(c.id for c in train + val) == [c.id for c in cells]
    assert not {c.patient for c in train} & {c.patient for c in val}
    assert 0.25 < len(val) / len(cells) < 0.35
    assert [c.id for c in train] == sorted(c.id for c in train)  # input order kept


def test_three_way_split_is_a_patient_disjoint_stratified_partition() -> None:
    cells = cohort(60)
    train, val, test = split_train_val_test(cells, 0.2, 0.1, seed=3)
    assert sorted(c.id for c in train + val + test) == [c.id for c in cells]
    patients = [{c.patient for c in side} for side in (train, val, test)]
    assert not patients[0] & patients[1] and not patients[0] & patients[2]
    assert not patients[1] & patients[2]
    assert 0.15 < len(val) / len(cells) < 0.25 and 0.05 < len(test) / len(cells) < 0.15
    totals = Counter(c.code for c in cells)
    for side in (train, val, test):
        assert set(Counter(c.code for c in side)) == set(totals)  # every class on every side
    assert split_train_val_test(cells, 0.2, 0.1, seed=3) == (train, val, test)
    assert split_train_val_test(cells, 0.2, 0.1, seed=4)[2] != test


def test_three_way_split_of_cells_without_patients_is_stratified_per_class() -> None:
    cells = [Cell(i, code, None) for i, code in enumerate(c for c in CODES for _ in range(100))]
    train, val, test = split_train_val_test(cells, 0.2, 0.1, seed=0)
    assert set(Counter(c.code for c in test).values()) == {10}
    assert set(Counter(c.code for c in val).values()) == {20}
    assert set(Counter(c.code for c in train).values()) == {70}


def test_without_a_test_side_the_three_way_split_is_the_two_way_one() -> None:
    cells = cohort()
    train, val, test = split_train_val_test(cells, 0.3, 0.0, seed=1)
    assert test == [] and (train, val) == split_train_val(cells, 0.3, seed=1)


@pytest.mark.parametrize(("val", "test"), [(0.0, 0.1), (0.6, 0.4), (0.3, -0.1), (1.0, 0.0)])
def test_fractions_that_leave_a_side_empty_are_refused(val: float, test: float) -> None:
    with pytest.raises(ValueError, match=r"fractions|nothing to train on"):
        split_train_val_test(cohort(10), val, test)
