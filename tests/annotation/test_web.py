from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command

from annotation.models import CellImage, ModelVersion, ReviewItem
from annotation.services.roles import ROLES

pytestmark = pytest.mark.django_db


def test_home_page_and_health_check(client) -> None:
    page = client.get("/", follow=True)  # anonymous: the sign-in page
    assert page.redirect_chain[0][0].startswith("/accounts/login/")
    assert page.status_code == 200 and b"WBC portal" in page.content
    health = client.get("/health/")
    assert health.status_code == 200 and health.json()["database"] == "ok"
    css = client.get("/static/portal.css")
    assert css.status_code == 200 and b"font-family" in b"".join(css.streaming_content)


def test_roles_exist_with_their_permissions() -> None:
    groups = {
        g.name: {f"{p.content_type.app_label}.{p.codename}" for p in g.permissions.all()}
        for g in Group.objects.all()
    }
    assert set(ROLES) <= set(groups)
    assert "annotation.label_cell" in groups["hematologist"]
    assert "annotation.export_cells" not in groups["hematologist"]
    assert "annotation.export_cells" in groups["data_scientist"]
    assert "annotation.label_cell" not in groups["data_scientist"]
    assert groups["admin"] >= groups["hematologist"] | groups["data_scientist"]


@pytest.mark.django_db(transaction=True)
def test_load_demo_trains_a_first_model_queues_the_smear_and_makes_accounts(
    client, settings
) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = True  # the embedded default: tasks run in-process
    from wbcportal.celery import app

    app.conf.task_always_eager = True
    try:
        out = io.StringIO()
        call_command("load_demo", stdout=out)
    finally:
        app.conf.task_always_eager = settings.CELERY_TASK_ALWAYS_EAGER = False
    text = out.getvalue()
    assert (
        CellImage.objects.filter(case__accession_id="DEMO-PBC", current_label__isnull=False).count()
        == 54
    )
    assert ModelVersion.objects.get().status == "active"
    smear = CellImage.objects.filter(case__accession_id="DEMO-SMEAR")
    assert smear.count() == 54 and not smear.filter(current_label__isnull=False).exists()
    assert ReviewItem.objects.filter(status="queued").count() >= 1  # something to label at once
    credentials = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith("demo_"):
            credentials[parts[0]] = parts[1]
    assert set(credentials) == {f"demo_{r}" for r in ROLES}
    assert client.login(username="demo_hematologist", password=credentials["demo_hematologist"])
    # Running it again imports and trains nothing and keeps the passwords.
    out2 = io.StringIO()
    call_command("load_demo", stdout=out2)
    assert "imported 0 cells" in out2.getvalue() and ModelVersion.objects.count() == 1
    assert credentials["demo_admin"] in out2.getvalue()


def test_cell_images_are_served_only_to_signed_in_users(client, django_user_model) -> None:
    call_command("load_demo", "--no-train", stdout=io.StringIO())
    cell = CellImage.objects.first()
    url = f"/media/{cell.image.name}"
    assert client.get(url).status_code == 302  # to the login page
    user = django_user_model.objects.create_user("viewer", password="Long-enough-pass-1")
    client.force_login(user)
    response = client.get(url)
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == cell.image.read()
    assert client.get("/media/cells/../../etc/passwd").status_code == 404
