"""Tokens can be revoked (by their owner, or by an admin for anyone), audited, and a
revoked token is refused; passwords go through Django's validators wherever an admin
creates a user (the API and the command line)."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation.models import AuditEvent
from tests.annotation.api.test_errors_and_auth import assert_error_shape

pytestmark = pytest.mark.django_db


def test_a_user_revokes_their_own_token_and_it_is_refused_from_then_on(clients, users) -> None:
    heme = clients["hematologist"]
    assert heme.get("/api/auth/me/").status_code == 200
    response = heme.post("/api/auth/token/revoke/")
    assert response.status_code == 200, response.content
    assert response.json() == {"username": "u_hematologist", "revoked": True}
    assert_error_shape(heme.get("/api/auth/me/"), 401, "authentication_failed")
    assert not Token.objects.filter(user=users["hematologist"]).exists()
    event = AuditEvent.objects.get(action="token.revoke")
    assert event.actor == users["hematologist"]
    assert event.target_id == str(users["hematologist"].pk)
    # other users' tokens are untouched
    assert clients["data_scientist"].get("/api/auth/me/").status_code == 200


def test_an_admin_revokes_anyones_token_and_others_may_not(clients, users) -> None:
    target = users["data_scientist"]
    url = f"/api/users/{target.pk}/token/revoke/"
    assert_error_shape(clients["hematologist"].post(url), 403, "permission_denied")
    assert clients["data_scientist"].get("/api/auth/me/").status_code == 200
    response = clients["admin"].post(url)
    assert response.status_code == 200 and response.json()["revoked"] is True
    assert_error_shape(clients["data_scientist"].get("/api/cases/"), 401, "authentication_failed")
    event = AuditEvent.objects.get(action="token.revoke")
    assert event.actor == users["admin"] and event.after["username"] == "u_data_scientist"
    again = clients["admin"].post(url)  # idempotent, and says there was nothing to revoke
    assert again.status_code == 200 and again.json()["revoked"] is False
    missing = clients["admin"].post("/api/users/987654/token/revoke/")
    assert "GET /api/users/" in assert_error_shape(missing, 404, "not_found")["message"]


def test_revoking_from_the_command_line_is_audited_too(clients, users) -> None:
    call_command("issue_token", "u_hematologist", "--revoke", stdout=io.StringIO())
    assert_error_shape(clients["hematologist"].get("/api/auth/me/"), 401, "authentication_failed")
    event = AuditEvent.objects.get(action="token.revoke")
    assert event.actor is None and event.after == {"username": "u_hematologist", "had_token": True}


def test_a_new_token_after_revocation_is_a_different_key(clients, users) -> None:
    from tests.annotation.api.conftest import PASSWORD

    old = Token.objects.get(user=users["hematologist"]).key
    clients["hematologist"].post("/api/auth/token/revoke/")
    fresh = APIClient().post(
        "/api/auth/token/", {"username": "u_hematologist", "password": PASSWORD}
    )
    assert fresh.status_code == 200 and fresh.json()["token"] != old


WEAK = {
    "password1234": "too common",
    "1234567890123": "entirely numeric",
    "new_reader_2024": "too similar to the username",
}


@pytest.mark.parametrize("password", list(WEAK), ids=list(WEAK.values()))
def test_weak_passwords_are_refused_when_an_admin_creates_a_user(admin_api, password) -> None:
    response = admin_api.post(
        "/api/users/",
        {"username": "new_reader_2024", "password": password, "role": "hematologist"},
    )
    error = assert_error_shape(response, 400, "weak_password")
    assert "password" in error["fields"] and "The rules:" in error["message"]
    assert not get_user_model().objects.filter(username="new_reader_2024").exists()


@pytest.mark.parametrize("password", list(WEAK), ids=list(WEAK.values()))
def test_weak_passwords_are_refused_on_the_command_line(db, monkeypatch, password) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
    with pytest.raises(CommandError, match="password was refused"):
        call_command("create_user", "new_reader_2024", "hematologist", "--password-stdin")
    assert not get_user_model().objects.filter(username="new_reader_2024").exists()


def test_a_strong_password_creates_the_user_from_the_command_line(db, monkeypatch) -> None:
    monkeypatch.setenv("WBC_NEW_USER_PASSWORD", "correct-Horse-battery-9")
    out = io.StringIO()
    call_command("create_user", "reader", "hematologist", stdout=out)
    assert "reader is now hematologist" in out.getvalue()
    user = get_user_model().objects.get(username="reader")
    assert user.check_password("correct-Horse-battery-9")
    assert list(user.groups.values_list("name", flat=True)) == ["hematologist"]
