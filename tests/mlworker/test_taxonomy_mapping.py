"""The analyser's and datasets' own class names map onto the 14-Diff codes."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mlworker.taxonomy import CODES, resolve_source_name


def test_every_cellavision_class_folder_is_known(shared_data: Path) -> None:
    names = {
        p.name for p in (shared_data / "cellavision_cases").glob("*/Signed slides/*") if p.is_dir()
    }
    assert names, "no class folders found"
    unknown = sorted(n for n in names if not resolve_source_name(n).known)
    assert unknown == []


@pytest.mark.parametrize("dataset", ["pbc", "deepapl"])
def test_manifest_source_labels_map_to_their_diff14_code(shared_data: Path, dataset: str) -> None:
    with (shared_data / dataset / "manifest.csv").open() as fh:
        pairs = {(r["source_label"], r["diff14"]) for r in csv.DictReader(fh)}
    for source_label, code in pairs:
        assert resolve_source_name(source_label).code == code, source_label


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("Segmented neutrophils", "NE"),
        ("Band neutrophils", "NE"),
        ("Blast, no lineage spec", "BL"),
        ("Lymphocyte, variant", "LR"),
        ("Smudge cells", "AR"),
        ("Arifact", "AR"),
        ("Erythroblast", "NR"),
        ("  plasma   CELLS ", "PC"),
    ],
)
def test_analyser_names(name: str, code: str) -> None:
    assert resolve_source_name(name).code == code


@pytest.mark.parametrize(
    "name", ["Promonocyte", "Giant thrombocyte", "Thrombocyte aggregation", "Unidentified"]
)
def test_names_outside_the_14_classes_are_known_but_unlabelled(name: str) -> None:
    resolved = resolve_source_name(name)
    assert resolved.code is None and resolved.known


def test_codes_map_to_themselves_and_nonsense_is_unknown() -> None:
    assert all(resolve_source_name(code).code == code for code in CODES)
    assert resolve_source_name("Neutrofil").known is False
