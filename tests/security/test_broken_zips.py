"""Broken and hostile zips: a wrong CRC, truncated data, a member with more data than it
declares, an empty archive, one without images, and a 1 GiB member of zeros packed into
a small zip. Each is a 400 with the reason, fast and in bounded memory: sizes are checked
from the archive's directory before anything is extracted, and every read is bounded."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from annotation.models import CellImage
from tests.annotation.api.conftest import jpeg
from tests.annotation.api.test_errors_and_auth import assert_error_shape

pytestmark = pytest.mark.django_db
URL = "/api/cells/upload/"
GIB = 1024**3


def upload(client, name: str, data: bytes):
    return client.post(URL, {"files": [SimpleUploadedFile(name, data)]}, format="multipart")


def stored(settings) -> list[Path]:
    root = Path(settings.MEDIA_ROOT)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def stored_zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def zeros_zip(tmp_path_factory) -> bytes:
    """A zip of one member, 1 GiB of zeros, written in 1 MiB chunks (about 1 MiB packed)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    chunk = bytes(1024 * 1024)
    member = zipfile.ZipInfo("cells/NE/huge.bmp")
    member.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open(member, "w", force_zip64=True) as out:
            for _ in range(GIB // len(chunk)):
                out.write(chunk)
        zf.writestr("cells/NE/ok.jpg", jpeg(1))
    data = path.read_bytes()
    path.unlink()
    assert len(data) < 8 * 1024 * 1024
    return data


def test_a_member_with_a_wrong_crc_is_a_400(admin_api, settings) -> None:
    image = jpeg(2)
    archive = bytearray(stored_zip({"cells/NE/a.jpg": image}))
    archive[archive.index(image) + len(image) // 2] ^= 0xFF  # one flipped byte
    error = assert_error_shape(upload(admin_api, "cells.zip", bytes(archive)), 400, "bad_zip")
    assert "CRC" in error["message"] and "cells/NE/a.jpg" in error["message"]
    assert not CellImage.objects.exists() and not stored(settings)


def test_a_truncated_zip_is_a_400(admin_api, settings) -> None:
    archive = stored_zip({"cells/NE/a.jpg": jpeg(3), "cells/NE/b.jpg": jpeg(4)})
    error = assert_error_shape(upload(admin_api, "cells.zip", archive[:-40]), 400, "bad_zip")
    assert "not a readable zip" in error["message"]
    assert not CellImage.objects.exists()


def test_a_member_with_more_data_than_it_declares_is_a_400(admin_api, settings) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cells/NE/a.bmp", bytes(200_000))
    archive = bytearray(buf.getvalue())
    # Claim 100 bytes uncompressed, in the local header and the central directory.
    struct.pack_into("<I", archive, 22, 100)
    central = archive.index(b"PK\x01\x02")
    struct.pack_into("<I", archive, central + 24, 100)
    error = assert_error_shape(upload(admin_api, "cells.zip", bytes(archive)), 400, "bad_zip")
    assert "cells/NE/a.bmp" in error["message"]
    assert not CellImage.objects.exists()


def test_an_empty_zip_is_a_400(admin_api) -> None:
    error = assert_error_shape(upload(admin_api, "empty.zip", stored_zip({})), 400, "empty_zip")
    assert "holds no files" in error["message"]
    folders_only = stored_zip({"cells/": b"", "cells/NE/": b""})
    assert_error_shape(upload(admin_api, "folders.zip", folders_only), 400, "empty_zip")


def test_a_zip_without_images_is_a_400(admin_api) -> None:
    archive = stored_zip({"cells/.DS_Store": b"\x00\x00", "__MACOSX/cells/._x": b"x"})
    error = assert_error_shape(upload(admin_api, "nothing.zip", archive), 400, "no_images")
    assert "no image files" in error["message"]


def test_a_huge_member_is_refused_from_the_directory_fast_and_in_bounded_memory(
    admin_api, settings, zeros_zip
) -> None:
    tracemalloc.start()
    try:
        started = time.monotonic()
        response = upload(admin_api, "bomb.zip", zeros_zip)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    error = assert_error_shape(response, 400, "zip_bomb")
    assert "cells/NE/huge.bmp" in error["message"]
    assert elapsed < 3, f"took {elapsed:.1f} s"
    assert peak < 64 * 1024 * 1024, f"peak Python allocations {peak} bytes"
    assert not CellImage.objects.exists() and not stored(settings)


def test_a_member_over_the_per_image_limit_is_skipped_unread(
    admin_api, settings, zeros_zip
) -> None:
    # With the ratio check out of the way, the declared size alone keeps the member out.
    settings.WBC_MAX_ZIP_RATIO = 10**9
    tracemalloc.start()
    try:
        started = time.monotonic()
        response = upload(admin_api, "bomb.zip", zeros_zip)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["new_cells"] == 1
    assert body["skipped_files"] == [
        {
            "file": "cells/NE/huge.bmp",
            "reason": f"file is {GIB} bytes, over the per-image limit of "
            f"{settings.WBC_MAX_UPLOAD_BYTES}",
        }
    ]
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert peak < 64 * 1024 * 1024, f"peak Python allocations {peak} bytes"
