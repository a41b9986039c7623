"""User management cannot be used to take over or lock out accounts by accident: creating
a user that exists is a 409 that changes nothing, a role changes only through an explicit
PATCH, and the last admin cannot remove their own admin role."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from annotation.models import AuditEvent
from annotation.roles import user_roles
from tests.annotation.api.conftest import PASSWORD
from tests.annotation.api.test_errors_and_auth import assert_error_shape

pytestmark = pytest.mark.django_db


def roles_of(username: str) -> set[str]:
    return set(user_roles(get_user_model().objects.get(username=username)))


def test_creating_a_user_that_exists_is_a_409_and_changes_nothing(admin_api, users) -> None:
    response = admin_api.post(
        "/api/users/",
        {"username": "u_hematologist", "password": "Another-long-pass-9", "role": "admin"},
        format="json",
    )
    error = assert_error_shape(response, 409, "user_exists")
    assert "PATCH /api/users/" in error["message"]
    assert roles_of("u_hematologist") == {"hematologist"}
    user = get_user_model().objects.get(username="u_hematologist")
    assert user.check_password(PASSWORD) and not user.is_staff


def test_an_admin_cannot_demote_themselves_through_create(admin_api, users) -> None:
    response = admin_api.post(
        "/api/users/",
        {"username": "u_admin", "password": "Another-long-pass-9", "role": "hematologist"},
        format="json",
    )
    assert_error_shape(response, 409, "user_exists")
    assert roles_of("u_admin") == {"admin"}


def test_a_role_changes_through_patch_and_is_audited(admin_api, users) -> None:
    heme = users["hematologist"]
    response = admin_api.patch(
        f"/api/users/{heme.pk}/", {"role": "senior_hematologist"}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["roles"] == ["senior_hematologist"]
    assert roles_of("u_hematologist") == {"senior_hematologist"}
    event = AuditEvent.objects.get(action="user.role_change")
    assert event.before == {"roles": ["hematologist"]}
    assert event.after == {"roles": ["senior_hematologist"]}
    assert_error_shape(admin_api.patch("/api/users/999999/", {"role": "admin"}), 404)
    bad = admin_api.patch(f"/api/users/{heme.pk}/", {"role": "boss"}, format="json")
    assert set(assert_error_shape(bad, 400)["fields"]) == {"role"}
    other = admin_api.patch(f"/api/users/{heme.pk}/", {"password": "x"}, format="json")
    assert "password" in assert_error_shape(other, 400)["fields"]


def test_only_admins_change_roles(clients, users) -> None:
    heme = users["hematologist"]
    response = clients["hematologist"].patch(
        f"/api/users/{heme.pk}/", {"role": "admin"}, format="json"
    )
    assert_error_shape(response, 403, "permission_denied")
    assert roles_of("u_hematologist") == {"hematologist"}


def test_the_last_admin_cannot_remove_their_own_admin_role(admin_api, users) -> None:
    admin = users["admin"]
    response = admin_api.patch(f"/api/users/{admin.pk}/", {"role": "hematologist"}, format="json")
    error = assert_error_shape(response, 409, "last_admin")
    assert "last admin" in error["message"]
    assert roles_of("u_admin") == {"admin"}
    # With a second admin, the first may step down.
    created = admin_api.post(
        "/api/users/",
        {"username": "second_admin", "password": "Another-long-pass-9", "role": "admin"},
        format="json",
    )
    assert created.status_code == 201
    assert (
        get_user_model().objects.get(username="second_admin").check_password("Another-long-pass-9")
    )
    stepped_down = admin_api.patch(
        f"/api/users/{admin.pk}/", {"role": "hematologist"}, format="json"
    )
    assert stepped_down.status_code == 200 and roles_of("u_admin") == {"hematologist"}
