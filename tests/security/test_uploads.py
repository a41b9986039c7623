"""Hostile files: non-images, decompression bombs, oversized files, zip entries that climb
out of the archive or are symbolic links, and symbolic links in a folder given to
import_cells. Each is refused with a 4xx (or a skip line) that says why, and nothing of
it is stored."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError

from annotation.models import CellImage
from tests.annotation.api.conftest import jpeg
from tests.annotation.api.test_errors_and_auth import assert_error_shape

pytestmark = pytest.mark.django_db
URL = "/api/cells/upload/"


def upload(client, *files: tuple[str, bytes]):
    payload = {"files": [SimpleUploadedFile(name, data) for name, data in files]}
    return client.post(URL, payload, format="multipart")


def stored(settings) -> list[Path]:
    root = Path(settings.MEDIA_ROOT)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG that claims ``width`` x ``height`` pixels in a few dozen bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("cell.jpg", b"#!/bin/sh\nrm -rf /\n", "not an image"),
        ("cell.jpg", b"<svg xmlns='http://www.w3.org/2000/svg'/>", "not an image"),
        ("cell.png", png_header_only(50_000, 50_000), "decompression bomb"),
        ("cell.jpg", jpeg(1)[:200], "corrupt image"),
        ("cell.gif", b"GIF89a" + b"\x00" * 64, "not"),
    ],
    ids=["script", "svg", "bomb", "truncated", "gif"],
)
def test_a_file_that_is_not_a_usable_image_is_a_400_with_the_reason(
    admin_api, settings, name, data, reason
) -> None:
    error = assert_error_shape(upload(admin_api, (name, data)), 400, "nothing_imported")
    assert reason in error["message"] and name in error["fields"]
    assert not CellImage.objects.exists() and not stored(settings)


def test_an_oversized_file_is_dropped_while_it_streams_in(admin_api, settings) -> None:
    settings.WBC_MAX_UPLOAD_BYTES = 2_000
    big = jpeg(3, size=(300, 300))
    assert len(big) > 2_000
    error = assert_error_shape(upload(admin_api, ("big.jpg", big)), 400, "nothing_imported")
    assert "limit of 2000 bytes" in error["message"]
    assert not CellImage.objects.exists() and not stored(settings)


def zip_with(entries: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16  # a symbolic link, as `zip -y` stores it
            zf.writestr(info, target)
    return buf.getvalue()


@pytest.mark.parametrize(
    "entry", ["../../escape.jpg", "/tmp/absolute.jpg", "cells/../../escape.jpg", "C:/x.jpg"]
)
def test_a_zip_entry_that_climbs_out_is_refused_whole(admin_api, settings, tmp_path, entry) -> None:
    archive = zip_with({"cells/ok.jpg": jpeg(4), entry: jpeg(5)})
    error = assert_error_shape(upload(admin_api, ("cells.zip", archive)), 400, "unsafe_zip")
    assert "outside the archive" in error["message"]
    assert not CellImage.objects.exists() and not stored(settings)
    assert not Path("/tmp/absolute.jpg").exists()


def test_a_zip_entry_that_is_a_symlink_is_refused_whole(admin_api, settings) -> None:
    archive = zip_with({"cells/ok.jpg": jpeg(6)}, links={"cells/passwd.jpg": "/etc/passwd"})
    error = assert_error_shape(upload(admin_api, ("cells.zip", archive)), 400, "unsafe_zip")
    assert "symbolic link" in error["message"]
    assert not CellImage.objects.exists() and not stored(settings)


def test_symlinks_in_an_import_folder_are_reported_and_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "secret").mkdir(parents=True)
    (outside / "other-patient.jpg").write_bytes(jpeg(7))
    (outside / "secret" / "more.jpg").write_bytes(jpeg(8))
    folder = tmp_path / "import" / "NE"
    folder.mkdir(parents=True)
    (folder / "real.jpg").write_bytes(jpeg(9))
    (folder / "link.jpg").symlink_to(outside / "other-patient.jpg")
    (folder / "linked-dir").symlink_to(outside / "secret", target_is_directory=True)
    out = io.StringIO()
    call_command(
        "import_cells", str(tmp_path / "import"), "--no-progress", "--no-processing", stdout=out
    )
    text = out.getvalue()
    assert "skipped NE/link.jpg: is a symbolic link" in text
    assert "skipped NE/linked-dir: is a symbolic link" in text
    assert list(CellImage.objects.values_list("original_filename", flat=True)) == ["real.jpg"]


def test_a_folder_of_nothing_but_links_imports_nothing(tmp_path: Path) -> None:
    (tmp_path / "outside.jpg").write_bytes(jpeg(10))
    folder = tmp_path / "import"
    folder.mkdir()
    (folder / "a.jpg").symlink_to(tmp_path / "outside.jpg")
    out = io.StringIO()
    call_command("import_cells", str(folder), "--no-progress", "--no-processing", stdout=out)
    assert "imported 0 cells" in out.getvalue() and "symbolic link" in out.getvalue()
    assert not CellImage.objects.exists()


def test_import_cells_refuses_a_zip_with_a_symlink(tmp_path: Path) -> None:
    archive = tmp_path / "cells.zip"
    archive.write_bytes(zip_with({"a/ok.jpg": jpeg(11)}, links={"a/x.jpg": "/etc/shadow"}))
    with pytest.raises(CommandError, match="symbolic link"):
        call_command("import_cells", str(archive), "--no-progress", "--no-processing")
    assert not CellImage.objects.exists()
