"""Find the cell images in an import source and what each one's folder says about it.

Layouts (detected in this order):
1. a folder with ``manifest.csv`` (``path,diff14[,source_label][,patient]``);
2. a CellaVision export: ``Patient_NN/[date/]Signed slides/<class name>/*.jpg`` are
   labelled cells, ``Unsigned slides/*.jpg`` unlabelled ones, ``cases.csv`` beside the
   patient folders gives the diagnosis;
3. a class-per-folder tree: each sub-folder name is a class name; files at the top level
   are unlabelled.
A zip of any of these is unpacked (after its names and declared sizes are checked, each
member copied in bounded chunks) and read the same way.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from annotation.errors import ApplicationError

SIGNED = "signed slides"
UNSIGNED = "unsigned slides"
_DATE_DIR = re.compile(r"^\d{4}[-_.]?\d{2}[-_.]?\d{2}")
# Files that operating systems leave in folders; never cells, never worth a skip line.
_SYSTEM_FILES = {".ds_store", "desktop.ini"}


@dataclass(frozen=True)
class SourceFile:
    path: Path
    display_name: str  # path relative to the import root, for messages
    case_key: str
    class_name: str | None  # the source's class name; None for an unlabelled cell


@dataclass
class CaseInfo:
    accession_id: str
    patient: str = ""
    diagnosis: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class SourceListing:
    layout: str
    files: list[SourceFile]
    cases: dict[str, CaseInfo]
    # Files named by the source that cannot be read at all (e.g. missing from a manifest).
    missing: list[tuple[str, str]] = field(default_factory=list)


def _walk_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            continue  # never follow links out of the import folder
        if path.is_file() and path.name.lower() not in _SYSTEM_FILES:
            yield path


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _case(cases: dict[str, CaseInfo], key: str, *, patient: str) -> None:
    if key not in cases:
        cases[key] = CaseInfo(accession_id=key, patient=patient)


def _list_manifest(root: Path, case_name: str | None) -> SourceListing:
    files: list[SourceFile] = []
    cases: dict[str, CaseInfo] = {}
    missing: list[tuple[str, str]] = []
    manifest = root / "manifest.csv"
    with manifest.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = set(reader.fieldnames or [])
        if not {"path", "diff14"} <= columns:
            raise ApplicationError(
                f"{manifest} needs the columns path and diff14 (optional: source_label, "
                f"patient); it has {', '.join(sorted(columns)) or 'none'}.",
                code="bad_manifest",
            )
        resolved_root = root.resolve()
        for line_no, row in enumerate(reader, start=2):
            rel = (row.get("path") or "").strip()
            where = f"manifest.csv line {line_no}"
            candidate = (root / rel).resolve()
            if not rel or not candidate.is_relative_to(resolved_root):
                missing.append((rel or where, f"{where}: path is empty or outside the folder"))
                continue
            if not candidate.is_file():
                missing.append((rel, f"{where}: listed but not found"))
                continue
            patient = (row.get("patient") or "").strip()
            key = case_name or patient or root.name
            _case(cases, key, patient=patient)
            # The source label (e.g. "Band neutrophils") is the richer name; diff14 is the
            # code the dataset assigned. The code decides the label; the name is kept.
            diff14 = (row.get("diff14") or "").strip()
            source_label = (row.get("source_label") or "").strip()
            files.append(
                SourceFile(
                    path=candidate,
                    display_name=rel,
                    case_key=key,
                    class_name=diff14 or source_label or None,
                )
            )
    return SourceListing("manifest", files, cases, missing)


def _find_slide_dirs(root: Path) -> list[Path]:
    found = []
    for path in sorted(root.rglob("*")):
        if (
            path.is_dir()
            and path.name.lower() in {SIGNED, UNSIGNED}
            and len(path.relative_to(root).parts) <= 4
        ):
            found.append(path)
    return found


def _cellavision_case_dir(slides_dir: Path) -> Path:
    parent = slides_dir.parent
    if _DATE_DIR.match(parent.name):
        return parent.parent
    return parent


def _read_cases_csv(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    out: dict[str, dict[str, str]] = {}
    for row in rows:
        key = (row.get("Patient_ID") or row.get("patient") or row.get("case") or "").strip()
        if key:
            out[key] = {k: (v or "").strip() for k, v in row.items() if k}
    return out


def _list_cellavision(root: Path, slide_dirs: list[Path], case_name: str | None) -> SourceListing:
    files: list[SourceFile] = []
    cases: dict[str, CaseInfo] = {}
    case_rows = _read_cases_csv(root / "cases.csv") or _read_cases_csv(root.parent / "cases.csv")
    for slides in slide_dirs:
        case_dir = _cellavision_case_dir(slides)
        key = case_name or case_dir.name
        row = case_rows.get(case_dir.name, {})
        diagnosis = row.get("Diagnosis") or row.get("diagnosis") or ""
        metadata = {k: v for k, v in row.items() if k not in {"Diagnosis", "diagnosis"}}
        if key not in cases:
            cases[key] = CaseInfo(
                accession_id=key, patient=case_dir.name, diagnosis=diagnosis, metadata=metadata
            )
        signed = slides.name.lower() == SIGNED
        for path in _walk_files(slides):
            rel_parts = path.relative_to(slides).parts
            class_name = rel_parts[0] if signed and len(rel_parts) > 1 else None
            files.append(SourceFile(path, _rel(path, root), key, class_name))
    return SourceListing("cellavision", files, cases)


def _list_class_folders(root: Path, case_name: str | None) -> SourceListing:
    key = case_name or root.name
    cases = {key: CaseInfo(accession_id=key)}
    files = []
    for path in _walk_files(root):
        parts = path.relative_to(root).parts
        class_name = parts[0] if len(parts) > 1 else None
        files.append(SourceFile(path, _rel(path, root), key, class_name))
    return SourceListing("class_folders", files, cases)


def list_folder(root: Path, *, case_name: str | None = None) -> SourceListing:
    if not root.is_dir():
        raise ApplicationError(f"{root} is not a folder or a zip file.", code="not_found")
    if (root / "manifest.csv").is_file():
        return _list_manifest(root, case_name)
    slide_dirs = _find_slide_dirs(root)
    if slide_dirs:
        return _list_cellavision(root, slide_dirs, case_name)
    return _list_class_folders(root, case_name)


def _check_zip_member(info: zipfile.ZipInfo) -> None:
    name = info.filename
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", name) or ".." in pure.parts:
        raise ApplicationError(
            f"The zip entry {name!r} points outside the archive (absolute path or '..'); "
            "nothing was imported. Re-create the zip with relative paths.",
            code="unsafe_zip",
        )
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise ApplicationError(
            f"The zip entry {name!r} is a symbolic link; nothing was imported. "
            "Zip the files themselves, not links to them.",
            code="unsafe_zip",
        )


# Members smaller than this are never refused for their compression ratio: a tiny text
# file (manifest.csv) or a flat BMP compresses very well and is harmless at that size.
_RATIO_FREE_BYTES = 1024 * 1024
_COPY_CHUNK = 1024 * 1024
# What a damaged archive raises while a member is read: a wrong CRC, truncated deflate
# data, an encrypted member (RuntimeError), a compression zipfile cannot read.
_BROKEN_MEMBER = (zipfile.BadZipFile, EOFError, zlib.error, RuntimeError, NotImplementedError)


@dataclass
class UnpackedZip:
    root: Path
    # Members not extracted, with the reason (over the per-file limit), for the summary.
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ApplicationError(
            f"{path.name} is not a readable zip file ({exc}).", code="bad_zip"
        ) from None


def _check_sizes(
    path: Path, members: list[zipfile.ZipInfo], *, max_total_bytes: int, max_ratio: int
) -> None:
    """Sizes as the archive's central directory declares them, before anything is read:
    a zip bomb is refused here, in microseconds, whatever it would unpack to."""
    total = sum(info.file_size for info in members)
    if total > max_total_bytes:
        raise ApplicationError(
            f"{path.name} unpacks to {total} bytes, over the limit of {max_total_bytes}; "
            "split it into smaller archives.",
            code="zip_too_large",
        )
    for info in members:
        if info.file_size <= _RATIO_FREE_BYTES:
            continue
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > max_ratio:
            raise ApplicationError(
                f"The zip entry {info.filename!r} would unpack {ratio:.0f} times its "
                f"compressed size ({info.file_size} bytes), over the limit of {max_ratio}: "
                "cell images do not compress like that (a zip bomb?); nothing was imported.",
                code="zip_bomb",
            )


def _extract_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    """Copy one member in chunks, never more than its declared size: a member whose data
    runs past what the directory says is refused (zipfile also stops at the declared
    size, and checks the CRC at the end)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with archive.open(info) as member, target.open("wb") as out:
            while chunk := member.read(_COPY_CHUNK):
                written += len(chunk)
                if written > info.file_size:
                    raise zipfile.BadZipFile(
                        f"{info.filename!r} holds more data than its declared "
                        f"{info.file_size} bytes"
                    )
                out.write(chunk)
    except _BROKEN_MEMBER as exc:
        raise ApplicationError(
            f"The zip is damaged: reading {info.filename!r} failed ({exc}); nothing was "
            "imported. Re-create the archive (or check that the upload completed).",
            code="bad_zip",
        ) from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ApplicationError(
                f"The server's temporary disk is full ({exc.strerror}); nothing was "
                "imported. Tell an admin, and try again later.",
                code="storage_full",
                status=507,
            ) from exc
        # E.g. a file and a folder of the same name: the archive cannot be unpacked.
        raise ApplicationError(
            f"The zip entry {info.filename!r} cannot be unpacked ({exc.strerror or exc}); "
            "nothing was imported.",
            code="bad_zip",
        ) from None


def _extract(
    archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], tmp: Path, *, max_member_bytes: int
) -> list[tuple[str, str]]:
    skipped: list[tuple[str, str]] = []
    for info in members:
        # Names are checked already: no '..', no absolute path, so this stays in tmp.
        target = tmp.joinpath(*PurePosixPath(info.filename.replace("\\", "/")).parts)
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif info.file_size > max_member_bytes:
            skipped.append(
                (
                    info.filename,
                    f"file is {info.file_size} bytes, over the per-image limit of "
                    f"{max_member_bytes}",
                )
            )
        else:
            _extract_member(archive, info, target)
    return skipped


@contextlib.contextmanager
def unpacked_zip(
    path: Path, *, max_total_bytes: int, max_member_bytes: int, max_ratio: int
) -> Iterator[UnpackedZip]:
    """Check every entry's name and declared size first, then unpack into a temporary
    folder, member by member, each read bounded. A member over ``max_member_bytes`` is
    not extracted and comes back in ``skipped``; a damaged archive (a wrong CRC,
    truncated data), one with nothing in it, or one whose sizes break the limits is
    refused whole with the reason."""
    archive = _open_zip(path)
    with archive:
        members = archive.infolist()
        for info in members:
            _check_zip_member(info)
        if not any(not info.is_dir() for info in members):
            raise ApplicationError(
                f"{path.name} holds no files; nothing was imported. Zip the folder of "
                "cell images itself.",
                code="empty_zip",
            )
        _check_sizes(path, members, max_total_bytes=max_total_bytes, max_ratio=max_ratio)
        tmp = Path(tempfile.mkdtemp(prefix="wbc-import-"))
        try:
            skipped = _extract(archive, members, tmp, max_member_bytes=max_member_bytes)
            entries = [p for p in tmp.iterdir() if not p.name.startswith("__MACOSX")]
            # A zip of one folder reads as that folder (its name becomes the case name).
            if len(entries) == 1 and entries[0].is_dir():
                yield UnpackedZip(entries[0], skipped)
            else:
                renamed = tmp / path.stem
                renamed.mkdir()
                for entry in entries:
                    entry.rename(renamed / entry.name)
                yield UnpackedZip(renamed, skipped)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
