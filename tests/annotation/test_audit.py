from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction

from annotation.models import AuditEvent, Case, CellImage, Label
from annotation.services.labels import cell_label_create
from tests.paths import REPO_ROOT

pytestmark = pytest.mark.django_db


@pytest.fixture
def label() -> Label:
    case = Case.objects.create(accession_id="A")
    cell = CellImage.objects.create(case=case, image="c/a.jpg", sha256="a" * 64, width=1, height=1)
    return cell_label_create(cell_id=cell.pk, code="NE", annotator=None, source="imported")


def test_labels_and_audit_events_cannot_be_changed_in_the_database(label: Label) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the append-only triggers are PostgreSQL's")
    event = AuditEvent.objects.get()
    for query in (
        lambda: Label.objects.filter(pk=label.pk).update(code="LY"),
        lambda: Label.objects.filter(pk=label.pk).delete(),
        lambda: AuditEvent.objects.filter(pk=event.pk).update(action="forged"),
        lambda: AuditEvent.objects.filter(pk=event.pk).delete(),
    ):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            query()
    label.refresh_from_db()
    assert label.code == "NE" and AuditEvent.objects.get().action == "label.create"


def test_failed_sign_in_is_audited(client, django_user_model) -> None:
    django_user_model.objects.create_user("heme", password="Right-pass-123")
    assert not client.login(username="heme", password="wrong")
    event = AuditEvent.objects.get(action="login.failed")
    assert event.after["username"] == "heme"


def test_audit_export_for_a_date_range(label: Label, tmp_path) -> None:
    out = tmp_path / "audit.jsonl"
    call_command("export_audit", "--since", "2000-01-01", "--out", str(out), stderr=io.StringIO())
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["action"] for r in rows] == ["label.create"]
    assert rows[0]["after"]["code"] == "NE"
    call_command("export_audit", "--until", "2000-01-01", "--out", str(out), stderr=io.StringIO())
    assert out.read_text() == ""


def test_production_settings_pass_the_deploy_check() -> None:
    # DJANGO_ALLOW_ASYNC_UNSAFE is set by the browser tests' Playwright; never in production.
    unset = {"DEBUG", "SECRET_KEY", "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(
        WBC_ENV="production",
        SECRET_KEY="x" * 64 + "-a-long-random-production-secret",
        ALLOWED_HOSTS="wbc.example.org",
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
