"""Exports: the three formats, provenance, filters, the re-import round trip, and large
exports as a Celery job on a real worker."""

from __future__ import annotations

import csv
import io
import json
import time
import zipfile

import numpy as np
import pytest
from django.core.management import call_command
from django.db import connection
from PIL import Image
from pycocotools import mask as coco_mask

from annotation.models import Case, CellImage, ExportJob
from annotation.services.exports import rle_decode, rle_encode
from mlworker.segmentation.masks import wbc_and_nucleus

pytestmark = pytest.mark.django_db


def export(client, **params) -> zipfile.ZipFile:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    response = client.get(f"/api/exports/?{query}")
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/zip"
    assert response.streaming
    return zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))


def rows(zf: zipfile.ZipFile, name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(zf.read(name).decode())))


def test_imagefolder_has_a_folder_per_class_a_manifest_and_a_readme(ds_api, smear) -> None:
    zf = export(ds_api, format="imagefolder")
    names = zf.namelist()
    folders = sorted({n.split("/")[0] for n in names if "/" in n})
    assert folders == ["BL", "LY", "NE", "NR"]
    manifest = rows(zf, "manifest.csv")
    assert len(manifest) == 5
    assert {r["path"] for r in manifest} <= set(names)
    first = next(r for r in manifest if r["cell_id"] == str(smear["labelled"][0].pk))
    assert first["diff14"] == "NE" and first["annotator"] == "u_hematologist"
    assert first["label_source"] == "hematologist" and first["patient"] == "SMEAR-1"
    assert zf.read(first["path"]) == smear["labelled"][0].image.open("rb").read()
    readme = zf.read("README.md").decode()
    assert "| NE | Neutrophil (segmented and band) | normal | 2 |" in readme
    assert "label_status: labelled" in readme


def test_provenance_names_the_models_suggestion_at_labelling_time(ds_api, heme_api, smear) -> None:
    cell = smear["unlabelled"][1]  # predicted MY at 0.85 by the active model
    assert (
        heme_api.post(f"/api/cells/{cell.pk}/labels/", {"code": "ME"}, format="json").status_code
        == 201
    )
    row = next(
        r for r in rows(export(ds_api, format="csv"), "cells.csv") if r["cell_id"] == str(cell.pk)
    )
    assert (row["diff14"], row["model_suggestion"], row["model_version"]) == (
        "ME",
        "MY",
        "v-active",
    )
    assert float(row["model_confidence"]) == pytest.approx(0.85)
    assert row["labelled_at"] and row["label_id"]


def test_csv_filters_by_case_class_source_status_and_date(ds_api, smear) -> None:
    other = Case.objects.create(accession_id="OTHER")
    assert len(rows(export(ds_api, format="csv", label_status="any"), "cells.csv")) == 8
    assert len(rows(export(ds_api, format="csv", label_status="unlabelled"), "cells.csv")) == 3
    assert [r["diff14"] for r in rows(export(ds_api, format="csv", label="ne"), "cells.csv")] == [
        "NE",
        "NE",
    ]
    assert rows(export(ds_api, format="csv", case=other.pk), "cells.csv") == []
    assert rows(export(ds_api, format="csv", label_source="imported"), "cells.csv") == []
    assert rows(export(ds_api, format="csv", since="2999-01-01"), "cells.csv") == []
    assert len(rows(export(ds_api, format="csv", since="2000-01-01"), "cells.csv")) == 5
    readme = (
        export(ds_api, format="csv", label="NE", case=smear["case"].pk).read("README.md").decode()
    )
    assert "label: NE" in readme and f"case_id: {smear['case'].pk}" in readme


def test_bad_export_parameters_are_400_with_the_allowed_values(ds_api, db) -> None:
    error = ds_api.get("/api/exports/?format=tiff&label_status=some").json()["error"]
    assert set(error["fields"]) == {"format", "label_status"}
    assert "imagefolder" in error["fields"]["format"]


def test_coco_has_the_14_categories_and_masks_as_rle(ds_api, smear) -> None:
    zf = export(ds_api, format="coco")
    doc = json.loads(zf.read("annotations.json"))
    assert [c["name"] for c in doc["categories"]][:3] == ["NE", "LY", "MO"]
    assert len(doc["categories"]) == 14 and len(doc["images"]) == 5
    assert all(img["file_name"] in zf.namelist() for img in doc["images"])
    masked = next(a for a in doc["annotations"] if a["image_id"] == smear["labelled"][0].pk)
    with smear["labelled"][0].segmentations.get().mask.open("rb") as fh:
        mask = np.asarray(Image.open(fh))
    assert np.array_equal(rle_decode(masked["segmentation"]), mask > 0)
    assert np.array_equal(rle_decode(masked["nucleus_segmentation"]), mask == 255)
    assert masked["bbox"] == [12, 10, 40, 40] and masked["area"] == 1600
    assert masked["attributes"]["annotator"] == "u_hematologist"
    plain = next(a for a in doc["annotations"] if a["image_id"] == smear["labelled"][1].pk)
    assert plain["segmentation"] == [] and plain["mask_source"] == "none"


def test_rle_matches_the_pycocotools_convention() -> None:
    mask = np.array([[0, 1, 1], [0, 1, 0]], dtype=bool)
    # column-major: col0 = 0 0, col1 = 1 1, col2 = 1 0 -> runs 2 zeros, 3 ones, 1 zero
    assert rle_encode(mask) == {"size": [2, 3], "counts": [2, 3, 1]}
    starts_with_one = np.array([[1, 0]], dtype=bool)
    assert rle_encode(starts_with_one)["counts"] == [0, 1, 1]
    rng = np.random.default_rng(0)
    random_mask = rng.random((37, 53)) > 0.5
    assert np.array_equal(rle_decode(rle_encode(random_mask)), random_mask)


@pytest.mark.parametrize("seed", range(5))
def test_uncompressed_rle_is_what_pycocotools_encodes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    height, width = rng.integers(1, 60, size=2)
    mask = rng.random((height, width)) > rng.random()
    mask[0, 0] = bool(seed % 2)  # runs that start with a one, and with a zero
    ours = rle_encode(mask)
    theirs = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
    assert coco_mask.frPyObjects(ours, int(height), int(width)) == theirs
    assert np.array_equal(coco_mask.decode(theirs).astype(bool), mask)


def test_coco_masks_decode_with_pycocotools_and_bbox_area_are_its_own(ds_api, smear) -> None:
    doc = json.loads(export(ds_api, format="coco").read("annotations.json"))
    masked = next(a for a in doc["annotations"] if a["image_id"] == smear["labelled"][0].pk)
    with smear["labelled"][0].segmentations.get().mask.open("rb") as fh:
        wbc, nucleus = wbc_and_nucleus(np.asarray(Image.open(fh).convert("L")))
    height, width = wbc.shape
    for rle, expected in ((masked["segmentation"], wbc), (masked["nucleus_segmentation"], nucleus)):
        assert rle["size"] == [height, width] and all(isinstance(c, int) for c in rle["counts"])
        decoded = coco_mask.decode(coco_mask.frPyObjects(rle, height, width))
        assert np.array_equal(decoded.astype(bool), expected)
    compressed = coco_mask.frPyObjects(masked["segmentation"], height, width)
    assert masked["area"] == int(coco_mask.area(compressed))
    assert masked["bbox"] == [int(v) for v in coco_mask.toBbox(compressed)]


def test_an_imagefolder_export_reimports_as_the_same_cells_and_labels(
    ds_api, smear, tmp_path
) -> None:
    before = {
        c.sha256: (c.case.accession_id, c.current_label.code if c.current_label else None)
        for c in CellImage.objects.select_related("case", "current_label")
    }
    archive = tmp_path / "export.zip"
    response = ds_api.get("/api/exports/?format=imagefolder&label_status=any")
    archive.write_bytes(b"".join(response.streaming_content))
    # Empty the database, then read the export back with the import command. Labels and
    # audit events are append-only (row triggers refuse UPDATE and DELETE); TRUNCATE is
    # the one way to empty them, as for a fresh installation.
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no deferred checks pending
        cursor.execute(
            "TRUNCATE annotation_reviewitem, annotation_label, annotation_cellimage, "
            "annotation_case, annotation_auditevent CASCADE"
        )
    call_command("import_cells", str(archive), "--no-progress", stdout=io.StringIO())
    after = {
        c.sha256: (c.case.accession_id, c.current_label.code if c.current_label else None)
        for c in CellImage.objects.select_related("case", "current_label")
    }
    assert after == before


def test_large_exports_become_a_job_with_progress_and_a_download(
    ds_api, smear, settings, celery_worker
) -> None:
    settings.WBC_EXPORT_SYNC_MAX_CELLS = 2
    response = ds_api.get("/api/exports/?format=imagefolder")
    assert response.status_code == 202, response.content
    job = response.json()
    assert job["status"] == "queued" and job["n_cells"] == 5 and job["download_url"] is None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = ds_api.get(job["status_url"]).json()
        if job["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.3)
    assert job["status"] == "succeeded", job
    assert job["progress"]["done"] == 5 and job["progress"]["percent"] == 100.0
    download = ds_api.get(job["download_url"])
    assert download.status_code == 200
    zf = zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content)))
    assert len(rows(zf, "manifest.csv")) == 5
    # Another user's job is not visible to a data scientist.
    other = ExportJob.objects.create(format="csv")
    assert ds_api.get(f"/api/export-jobs/{other.pk}/").status_code == 404


def test_download_of_an_unfinished_job_is_409(ds_api, users) -> None:
    job = ExportJob.objects.create(format="csv", requested_by=users["data_scientist"])
    response = ds_api.get(f"/api/export-jobs/{job.pk}/download/")
    assert response.status_code == 409 and response.json()["error"]["code"] == "not_ready"
    listing = ds_api.get("/api/export-jobs/").json()
    assert [j["id"] for j in listing["results"]] == [job.pk]


def test_admins_see_every_export_job_others_only_their_own(clients, ds_api, users) -> None:
    own = ExportJob.objects.create(format="csv", requested_by=users["data_scientist"])
    other = ExportJob.objects.create(format="coco", requested_by=users["admin"])
    admin_listing = clients["admin"].get("/api/export-jobs/").json()
    assert [j["id"] for j in admin_listing["results"]] == [other.pk, own.pk]
    assert clients["admin"].get(f"/api/export-jobs/{own.pk}/").json()["id"] == own.pk
    hidden = ds_api.get(f"/api/export-jobs/{other.pk}/download/")
    assert hidden.status_code == 404
    assert hidden.json()["error"]["message"] == f"Export job {other.pk} does not exist."


def test_under_asgi_the_zip_is_pulled_piece_by_piece() -> None:
    from asgiref.sync import async_to_sync

    from annotation.api.exports import _to_async

    pulled: list[bytes] = []

    def pieces():
        for piece in (b"a", b"b"):
            pulled.append(piece)
            yield piece

    async def collect() -> list[tuple[bytes, int]]:
        return [(c, len(pulled)) async for c in _to_async(pieces())]

    # Each piece is sent before the next one is made.
    assert async_to_sync(collect)() == [(b"a", 1), (b"b", 2)]
