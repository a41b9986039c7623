from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command

from annotation.models import CellImage
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
