"""Upload through the API: the same validation and summary as import_cells, a 4xx with
the reason when nothing could be used, and nothing stored for a failing file."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from annotation.models import Case, CellImage
from tests.annotation.api.conftest import jpeg

pytestmark = pytest.mark.django_db
URL = "/api/cells/upload/"


def upload(client, *files: tuple[str, bytes], **fields: str):
    payload = {"files": [SimpleUploadedFile(name, data) for name, data in files], **fields}
    return client.post(URL, payload, format="multipart")


def stored_files(settings) -> list[Path]:
    root = Path(settings.MEDIA_ROOT) / "cells"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def tiny_png(side: int) -> bytes:
    """A few KB on disk, side x side pixels once decoded."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG")
    return buf.getvalue()


def test_images_go_into_the_named_case_with_the_given_label(admin_api, settings) -> None:
    response = upload(admin_api, ("a.jpg", jpeg(1)), ("b.jpg", jpeg(2)), case="UP-1", label="eo")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["new_cells"], body["labelled"], body["skipped"]) == (2, 2, 0)
    assert body["line"] == "imported 2 cells (2 labelled, 0 conflicting), 0 duplicates, 0 skipped"
    cells = CellImage.objects.filter(pk__in=body["cell_ids"]).select_related(
        "case", "current_label"
    )
    assert {(c.case.accession_id, c.current_label.code) for c in cells} == {("UP-1", "EO")}
    again = upload(admin_api, ("a.jpg", jpeg(1)), case="UP-1")
    assert again.status_code == 201 and again.json()["duplicates"] == 1
    assert len(stored_files(settings)) == 2


def test_a_zip_is_read_like_import_cells_reads_it(admin_api) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("smear7/NE/one.jpg", jpeg(3))
        zf.writestr("smear7/Lymphocytes/two.jpg", jpeg(4))
        zf.writestr("smear7/loose.jpg", jpeg(5))
    response = upload(admin_api, ("smear7.zip", buf.getvalue()))
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["layout"], body["new_cells"], body["labelled"]) == ("class_folders", 3, 2)
    assert Case.objects.filter(accession_id="smear7").exists()


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("notes.jpg", b"this is not an image at all", "not an image"),
        ("cut.jpg", jpeg(6)[:400], "corrupt image"),
        ("bomb.png", tiny_png(20_000), "refused as a decompression bomb"),
        ("overview.png", tiny_png(5_000), "not a single-cell crop (5000x5000 px"),
    ],
    ids=["non-image", "corrupt", "decompression-bomb", "over-the-pixel-limit"],
)
def test_a_single_unusable_file_is_a_400_with_its_reason(
    admin_api, settings, name, data, reason
) -> None:
    response = upload(admin_api, (name, data), case="BAD")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "nothing_imported"
    assert reason in error["fields"][name]
    assert CellImage.objects.count() == 0 and stored_files(settings) == []


def test_a_file_over_the_size_limit_is_dropped_before_it_is_stored(admin_api, settings) -> None:
    small, large = jpeg(7, (40, 40)), jpeg(8, (400, 400))
    settings.WBC_MAX_UPLOAD_BYTES = len(small) + 100
    assert len(large) > settings.WBC_MAX_UPLOAD_BYTES
    response = upload(admin_api, ("small.jpg", small), ("large.jpg", large), case="SIZE")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["new_cells"] == 1
    assert body["skipped_files"] == [
        {
            "file": "large.jpg",
            "reason": f"file is over the per-image limit of {settings.WBC_MAX_UPLOAD_BYTES} bytes",
        }
    ]
    assert len(stored_files(settings)) == 1
    only_large = upload(admin_api, ("large.jpg", large))
    assert only_large.status_code == 400 and "limit" in only_large.json()["error"]["message"]


def test_good_files_are_kept_and_bad_ones_listed(admin_api, settings) -> None:
    response = upload(admin_api, ("good.jpg", jpeg(9)), ("bad.jpg", b"GIF89a nope"), case="MIX")
    assert response.status_code == 201
    body = response.json()
    assert body["new_cells"] == 1 and body["skipped"] == 1
    assert body["skipped_files"][0]["file"] == "bad.jpg"
    assert len(stored_files(settings)) == 1


@pytest.mark.parametrize("entry", ["../escape.jpg", "/etc/abs.jpg", "a/../../b.jpg"])
def test_a_zip_entry_outside_the_archive_rejects_the_whole_zip(admin_api, settings, entry) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("fine/NE/ok.jpg", jpeg(10))
        zf.writestr(zipfile.ZipInfo(entry), jpeg(11))
    response = upload(admin_api, ("evil.zip", buf.getvalue()))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "unsafe_zip" and entry in error["message"]
    assert CellImage.objects.count() == 0 and stored_files(settings) == []


def test_a_broken_zip_and_a_request_without_files_say_what_to_send(admin_api) -> None:
    broken = upload(admin_api, ("x.zip", b"PK\x03\x04 not really"))
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "bad_zip"
    empty = admin_api.post(URL, {"case": "X"}, format="multipart")
    assert empty.status_code == 400 and empty.json()["error"]["fields"] == {"files": "required"}
    mixed = upload(admin_api, ("a.zip", b"PK"), ("b.jpg", jpeg(12)))
    assert mixed.status_code == 400 and mixed.json()["error"]["code"] == "mixed_upload"
