"""import_cells on each real layout, with the bad files real exports contain."""

from __future__ import annotations

import csv
import hashlib
import re
import shutil
import zipfile
from pathlib import Path

import pytest
from django.core.management.base import CommandError
from PIL import Image

from annotation.models import AuditEvent, Case, CellImage, ImportBatch, Label
from tests.annotation.helpers import copy_files, first_images, jpeg_bytes, run_import

pytestmark = pytest.mark.django_db
LINE = re.compile(
    r"^imported (\d+) cells \((\d+) labelled, (\d+) conflicting\), (\d+) duplicates, (\d+) skipped$"
)


def counts(lines: list[str]) -> tuple[int, ...]:
    match = LINE.match(lines[-1])
    assert match, f"last line has the wrong shape: {lines[-1]!r}"
    return tuple(int(g) for g in match.groups())


@pytest.fixture
def pbc_tree(shared_data: Path, tmp_path: Path) -> Path:
    root = tmp_path / "pbc_subset"
    for code in ("NE", "LY", "MY", "NR"):
        copy_files(first_images(shared_data / "pbc" / code, 3), root / code)
    return root


def test_class_per_folder_tree_labels_every_cell_with_its_folder_code(pbc_tree: Path) -> None:
    lines = run_import(str(pbc_tree))
    assert counts(lines) == (12, 12, 0, 0, 0)
    case = Case.objects.get(accession_id="pbc_subset")
    codes = sorted(c.current_label.code for c in case.cells.select_related("current_label"))
    assert codes == sorted(["NE", "LY", "MY", "NR"] * 3)
    for cell in CellImage.objects.all():
        assert cell.image.name.startswith(f"cells/{cell.sha256[:2]}/{cell.sha256}")
        assert (
            cell.image.read()
            == (pbc_tree / cell.source_class_name / cell.original_filename).read_bytes()
        )
        with Image.open(cell.image.path) as im:
            assert (cell.width, cell.height) == im.size
    assert all(lbl.source == "imported" and lbl.annotator is None for lbl in Label.objects.all())
    assert AuditEvent.objects.filter(action="label.create").count() == 12


def test_reimport_creates_nothing_new(pbc_tree: Path) -> None:
    run_import(str(pbc_tree))
    before = (CellImage.objects.count(), Label.objects.count(), Case.objects.count())
    assert counts(run_import(str(pbc_tree))) == (0, 0, 0, 12, 0)
    assert (CellImage.objects.count(), Label.objects.count(), Case.objects.count()) == before


def test_case_option_puts_cells_into_the_named_case(pbc_tree: Path) -> None:
    run_import(str(pbc_tree), "--case", "SMEAR-001")
    assert list(Case.objects.values_list("accession_id", flat=True)) == ["SMEAR-001"]


def test_manifest_folder_makes_one_case_per_patient(shared_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "deep"
    with (shared_data / "deepapl" / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    wanted = [r for r in rows if r["patient"] in {"Patient_00", "Patient_01"}][:10]
    wanted += [r for r in rows if r["diff14"] == "PC"][:2]
    for row in wanted:
        (root / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / "deepapl" / row["path"], root / row["path"])
    with (root / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "diff14", "source_label", "patient"])
        writer.writeheader()
        writer.writerows(wanted)
        writer.writerow(
            {"path": "NE/not_there.jpg", "diff14": "NE", "source_label": "", "patient": "P"}
        )
    lines = run_import(str(root))
    n_new, n_labelled, _, _, n_skipped = counts(lines)
    assert n_new == n_labelled == len({r["path"] for r in wanted})
    assert n_skipped == 1
    assert any("not_there.jpg" in line and "not found" in line for line in lines)
    patients = {r["patient"] for r in wanted}
    assert set(Case.objects.values_list("accession_id", flat=True)) == patients
    for row in wanted:
        sha = hashlib.sha256((root / row["path"]).read_bytes()).hexdigest()
        cell = CellImage.objects.select_related("case", "current_label").get(sha256=sha)
        assert cell.case.accession_id == row["patient"]
        assert cell.current_label.code == row["diff14"]


def test_cellavision_export_signed_unsigned_duplicates_and_conflicts(shared_data: Path) -> None:
    source = shared_data / "cellavision_cases"
    lines = run_import(str(source))
    n_new, n_labelled, n_conflicting, n_dup, n_skipped = counts(lines)

    # Oracle computed independently from the files on disk.
    by_sha: dict[str, set[str]] = {}
    for path in source.rglob("*.jpg"):
        by_sha.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), set()).add(
            path.parent.name if "Signed slides" in path.parts else ""
        )
    overview = [p for p in source.rglob("*.jpg") if p.stat().st_size > 500_000]
    assert len(overview) == 1
    overview_sha = hashlib.sha256(overview[0].read_bytes()).hexdigest()
    cells = {sha: names - {""} for sha, names in by_sha.items() if sha != overview_sha}
    conflicting = {sha for sha, names in cells.items() if len(names) > 1}
    assert n_new == len(cells) == CellImage.objects.count()
    assert n_conflicting == len(conflicting) >= 1
    assert n_dup == sum(1 for p in source.rglob("*.jpg")) - 1 - len(cells)
    n_thumbs = len(list(source.rglob("Thumbs.db")))
    assert n_skipped == 1 + n_thumbs
    assert any("not a single-cell crop" in line and "2928x2954" in line for line in lines)
    assert any("Thumbs.db" in line and "not an image" in line for line in lines)
    # Promonocytes are outside the 14 classes: imported unlabelled, name kept, counted.
    assert any("'Promonocyte'" in line for line in lines)
    promonocyte = CellImage.objects.filter(source_class_name="Promonocyte")
    assert promonocyte.exists() and not promonocyte.filter(current_label__isnull=False).exists()
    assert n_labelled == CellImage.objects.filter(current_label__isnull=False).count()

    # A conflicting cell keeps both source names and gets no label.
    for sha in conflicting:
        cell = CellImage.objects.get(sha256=sha)
        assert cell.has_label_conflict and cell.current_label_id is None
        assert set(cell.source_labels) == cells[sha]
    # A cell both signed and unsigned carries its signed label.
    signed_and_unsigned = next(
        sha for sha, names in by_sha.items() if "" in names and len(names) == 2
    )
    cell = CellImage.objects.select_related("current_label").get(sha256=signed_and_unsigned)
    assert cell.current_label is not None

    # One case per patient folder, diagnosis from cases.csv.
    assert Case.objects.count() == 6
    assert Case.objects.get(accession_id="Patient_09").diagnosis == "AML"


def test_label_arrives_whatever_order_copies_are_imported(
    shared_data: Path, tmp_path: Path
) -> None:
    image = first_images(shared_data / "pbc" / "MO", 1)[0]
    unsigned = tmp_path / "first" / "Patient_01" / "Unsigned slides"
    copy_files([image], unsigned)
    assert counts(run_import(str(tmp_path / "first"))) == (1, 0, 0, 0, 0)
    signed = tmp_path / "second" / "Patient_01" / "Signed slides" / "Monocyte"
    copy_files([image], signed)
    lines = run_import(str(tmp_path / "second"))
    assert counts(lines) == (0, 0, 0, 1, 0)
    assert CellImage.objects.get().current_label.code == "MO"


def test_every_skip_reason_is_reported_and_the_rest_imports(
    shared_data: Path, tmp_path: Path, settings
) -> None:
    root = tmp_path / "mixed"
    good = copy_files(first_images(shared_data / "pbc" / "EO", 2), root / "EO")
    (root / "EO" / "notes.txt").write_text("not an image")
    (root / "EO" / "empty.jpg").write_bytes(b"")
    (root / "EO" / "truncated.jpg").write_bytes(good[0].read_bytes()[:3000])
    (root / "EO" / "tiny.jpg").write_bytes(jpeg_bytes((8, 8)))
    (root / "EO" / "overview.jpg").write_bytes(jpeg_bytes((2000, 1500)))
    (root / "EO" / "big.jpg").write_bytes(jpeg_bytes((300, 300), (10, 20, 30)))
    gif = root / "EO" / "anim.gif"
    Image.new("RGB", (100, 100)).save(gif, "GIF")
    settings.WBC_MAX_UPLOAD_BYTES = 200_000
    big = root / "EO" / "big.jpg"
    big.write_bytes(big.read_bytes() + b"\0" * settings.WBC_MAX_UPLOAD_BYTES)
    lines = run_import(str(root))
    assert counts(lines) == (2, 2, 0, 0, 7)
    reasons = "\n".join(lines)
    for name, reason in [
        ("notes.txt", "not an image"),
        ("empty.jpg", "empty file"),
        ("truncated.jpg", "corrupt image"),
        ("tiny.jpg", "too small"),
        ("overview.jpg", "not a single-cell crop"),
        ("big.jpg", "over the per-image limit"),
        ("anim.gif", "GIF images are not accepted"),
    ]:
        assert re.search(rf"skipped EO/{re.escape(name)}: .*{reason}", reasons), name
    batch = ImportBatch.objects.get()
    assert batch.status == "done" and batch.summary["skipped"] == 7


def test_unknown_class_folder_is_imported_unlabelled_with_its_name(
    shared_data: Path, tmp_path: Path
) -> None:
    root = tmp_path / "odd"
    copy_files(first_images(shared_data / "pbc" / "BA", 2), root / "Neutrofil typo")
    copy_files(first_images(shared_data / "pbc" / "LY", 1), root / "Giant thrombocyte")
    lines = run_import(str(root))
    assert counts(lines) == (3, 0, 0, 0, 0)
    assert any("unknown class name 'Neutrofil typo' x2" in line for line in lines)
    assert any(
        "outside the 14 classes" in line and "'Giant thrombocyte' x1" in line for line in lines
    )
    assert CellImage.objects.filter(source_class_name="Neutrofil typo").count() == 2
    assert not Label.objects.exists()


def _zip(folder: Path, dest: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return dest


def test_zip_of_a_tree_imports_like_the_folder(pbc_tree: Path, tmp_path: Path) -> None:
    archive = _zip(pbc_tree, tmp_path / "upload.zip")
    assert counts(run_import(str(archive))) == (12, 12, 0, 0, 0)
    assert Case.objects.get().accession_id == "pbc_subset"


@pytest.mark.parametrize("evil", ["../x.jpg", "/etc/x.jpg", "pbc_subset/../../x.jpg", "C:/x.jpg"])
def test_zip_with_path_escaping_names_is_rejected_whole(
    pbc_tree: Path, tmp_path: Path, evil: str
) -> None:
    archive = _zip(pbc_tree, tmp_path / "evil.zip", {evil: jpeg_bytes()})
    with pytest.raises(CommandError, match="points outside the archive"):
        run_import(str(archive))
    assert not CellImage.objects.exists()
    assert not (tmp_path / "x.jpg").exists()
    assert ImportBatch.objects.get().status == "failed"


def test_zip_with_a_symlink_entry_is_rejected(pbc_tree: Path, tmp_path: Path) -> None:
    archive = _zip(pbc_tree, tmp_path / "link.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        info = zipfile.ZipInfo("pbc_subset/NE/link.jpg")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(CommandError, match="symbolic link"):
        run_import(str(archive))
    assert not CellImage.objects.exists()


def test_a_file_that_is_not_a_zip_or_folder_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "cells.zip"
    bogus.write_text("hello")
    with pytest.raises(CommandError, match="not a readable zip"):
        run_import(str(bogus))
    with pytest.raises(CommandError, match="does not exist"):
        run_import(str(tmp_path / "nowhere"))
