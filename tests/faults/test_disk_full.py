"""A disk that fills up during an upload or an export: a clear error, and nothing
half-written left behind (no orphan files, no rows for files that were not stored, no
staging folders); once there is space again the same request works."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from annotation.models import CellImage, ExportJob, ImportBatch
from annotation.services.exports import export_job_run
from tests.annotation.api.conftest import jpeg
from tests.annotation.api.test_errors_and_auth import assert_error_shape
from tests.faults.storage import use_full_disk, use_normal_disk

pytestmark = pytest.mark.django_db


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The upload's staging folders land here, where the test can see every one."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def upload(client, n: int):
    files = [SimpleUploadedFile(f"c{i}.jpg", jpeg(100 + i)) for i in range(n)]
    return client.post("/api/cells/upload/", {"files": files, "case": "FULL-1"}, format="multipart")


def test_upload_onto_a_full_disk_is_507_and_leaves_nothing_behind(
    admin_api, settings, private_tmp
) -> None:
    use_full_disk(settings, saves_left=2)  # the third of four images hits the full disk
    error = assert_error_shape(upload(admin_api, 4), 507, "storage_full")
    assert "storage is full" in error["message"] and "run the import again" in error["message"]
    assert not CellImage.objects.exists()
    assert files_under(Path(settings.MEDIA_ROOT)) == []  # the two whole files and the half one
    assert list(private_tmp.iterdir()) == []  # the staging folder is gone too
    assert ImportBatch.objects.get().status == ImportBatch.Status.FAILED

    use_normal_disk(settings)
    response = upload(admin_api, 4)
    assert response.status_code == 201 and response.json()["new_cells"] == 4
    assert len(files_under(Path(settings.MEDIA_ROOT) / "cells")) == 4


def test_export_job_on_a_full_disk_fails_with_the_reason_and_no_file(
    clients, smear, settings
) -> None:
    ds = clients["data_scientist"]
    created = ds.get("/api/exports/", {"format": "csv", "mode": "job"})
    assert created.status_code == 202, created.content
    job_id = created.json()["id"]
    use_full_disk(settings, saves_left=0)
    job = export_job_run(job_id=job_id)  # what the worker's task runs
    assert job.status == ExportJob.Status.FAILED and not job.file
    assert "no space left" in job.error.lower() and "request the export again" in job.error
    assert files_under(Path(settings.MEDIA_ROOT) / "exports") == []
    detail = ds.get(f"/api/export-jobs/{job_id}/").json()
    assert detail["status"] == "failed" and "no space left" in detail["error"].lower()
    download = ds.get(f"/api/export-jobs/{job_id}/download/")
    assert "failed" in assert_error_shape(download, 409, "not_ready")["message"]

    use_normal_disk(settings)
    again = export_job_run(job_id=job_id)
    assert again.status == ExportJob.Status.SUCCEEDED
    assert ds.get(f"/api/export-jobs/{job_id}/download/").status_code == 200
