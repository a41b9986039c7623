"""The CSV format (``cells.csv``, no images) and the one CSV writer of every export.

Both ``cells.csv`` and the imagefolder's ``manifest.csv`` go through ``CsvTable.add``,
so the rule for cell values has one home: text a spreadsheet would run as a formula
(``=HYPERLINK(...)`` in a file name or a diagnosis) is written with a leading ``'``
(OWASP's CSV-injection advice), so Excel and LibreOffice show it as text. Only text is
escaped: numbers (a negative confidence, say) stay numbers.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from annotation.models import CellImage
from annotation.services.exports.filters import ExportFilters
from annotation.services.exports.formats.base import FormatWriter, zip_entry
from annotation.services.exports.provenance import PROVENANCE_COLUMNS

CSV_COLUMNS = ["diff14", *PROVENANCE_COLUMNS]
# What a spreadsheet reads as the start of a formula (OWASP "CSV Injection").
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """``value``, with a leading ``'`` when it is text a spreadsheet would run."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


class CsvTable:
    """A CSV file built in memory row by row, ``\\n`` line ends, header first."""

    def __init__(self, columns: Sequence[str]) -> None:
        self._buffer = io.StringIO()
        self._writer = csv.DictWriter(self._buffer, fieldnames=columns, lineterminator="\n")
        self._writer.writeheader()

    def add(self, row: Mapping[str, Any]) -> None:
        """Write one row: the one place an exported value becomes CSV text."""
        self._writer.writerow({key: csv_safe(value) for key, value in row.items()})

    def text(self) -> str:
        return self._buffer.getvalue()


class CsvFormat(FormatWriter):
    files_doc = "`cells.csv`: one row per cell with its current label."

    def __init__(self) -> None:
        self.table = CsvTable(CSV_COLUMNS)

    def add(self, zf: zipfile.ZipFile, cell: CellImage, *, code: str, row: dict[str, Any]) -> None:
        self.table.add({"diff14": code, **row})

    def finish(self, zf: zipfile.ZipFile, *, now: datetime, filters: ExportFilters) -> None:
        zf.writestr(zip_entry("cells.csv", now, compress=True), self.table.text())
