"""One error shape everywhere; tokens, sessions with CSRF, throttling, issue_token."""

from __future__ import annotations

import io

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.annotation.api.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def assert_error_shape(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "fields"}
    assert body["error"]["message"]
    if code:
        assert body["error"]["code"] == code
    return body["error"]


def test_every_kind_of_error_has_the_same_shape(clients, admin_api) -> None:
    assert_error_shape(clients["anonymous"].get("/api/cases/"), 401, "not_authenticated")
    assert "Token" in clients["anonymous"].get("/api/cases/")["WWW-Authenticate"]
    assert_error_shape(clients["data_scientist"].post("/api/cases/", {}), 403, "permission_denied")
    assert_error_shape(admin_api.get("/api/no-such-thing/"), 404, "not_found")
    assert_error_shape(admin_api.delete("/api/cases/"), 405, "method_not_allowed")
    assert_error_shape(admin_api.get("/api/cases/?created_from=yesterday"), 400, "invalid")
    bad_json = admin_api.generic(
        "POST", "/api/cases/", "{not json", content_type="application/json"
    )
    assert_error_shape(bad_json, 400, "parse_error")
    bad_token = APIClient()
    bad_token.credentials(HTTP_AUTHORIZATION="Token nope")
    assert_error_shape(bad_token.get("/api/cases/"), 401, "authentication_failed")


def test_token_endpoint_gives_the_users_token_and_roles(clients, users) -> None:
    response = clients["anonymous"].post(
        "/api/auth/token/", {"username": "u_hematologist", "password": PASSWORD}, format="json"
    )
    assert response.status_code == 200
    body = response.json()
    assert body["roles"] == ["hematologist"]
    me = APIClient()
    me.credentials(HTTP_AUTHORIZATION=f"Token {body['token']}")
    assert me.get("/api/auth/me/").json()["username"] == "u_hematologist"
    wrong = clients["anonymous"].post(
        "/api/auth/token/", {"username": "u_hematologist", "password": "x"}, format="json"
    )
    assert_error_shape(wrong, 400, "invalid")


def test_session_clients_need_a_csrf_token_for_writes(users, smear) -> None:
    browser = APIClient(enforce_csrf_checks=True)
    assert browser.login(username="u_hematologist", password=PASSWORD)
    assert browser.get("/api/cases/").status_code == 200
    cell = smear["labelled"][0]
    refused = browser.post(f"/api/cells/{cell.pk}/labels/", {"code": "NE"}, format="json")
    assert "X-CSRFToken" in assert_error_shape(refused, 403, "csrf_failed")["message"]
    csrf = browser.cookies.get("csrftoken")
    if csrf is None:  # the cookie comes with any page that uses the token
        browser.get("/admin/login/")
        csrf = browser.cookies["csrftoken"]
    ok = browser.post(
        f"/api/cells/{cell.pk}/labels/", {"code": "NE"}, format="json", HTTP_X_CSRFTOKEN=csrf.value
    )
    assert ok.status_code == 201


def test_token_clients_are_throttled_sessions_are_not(monkeypatch, clients, users) -> None:
    from annotation.api.throttling import TokenClientThrottle

    monkeypatch.setattr(TokenClientThrottle, "THROTTLE_RATES", {"token": "3/min"})
    cache.clear()
    try:
        statuses = [clients["data_scientist"].get("/api/cases/").status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        error = assert_error_shape(clients["data_scientist"].get("/api/cases/"), 429, "throttled")
        assert "Retry in" in error["message"]
        browser = APIClient()
        browser.login(username="u_data_scientist", password=PASSWORD)
        assert all(browser.get("/api/cases/").status_code == 200 for _ in range(5))
    finally:
        cache.clear()


def test_token_throttle_slides_and_does_not_count_refusals(monkeypatch, clients, users) -> None:
    """Two fixed windows make a sliding one: the last window's count weighs by how much
    of it the sliding window still covers; refused requests are not counted."""
    from annotation.api.throttling import TokenClientThrottle

    monkeypatch.setattr(TokenClientThrottle, "THROTTLE_RATES", {"token": "3/min"})
    now = [60.0 * 1_000_000 + 10]  # 10 s into a window
    monkeypatch.setattr(TokenClientThrottle, "timer", staticmethod(lambda: now[0]))
    cache.clear()
    client = clients["data_scientist"]
    try:
        assert [client.get("/api/cases/").status_code for _ in range(5)] == [200] * 3 + [429] * 2
        # Nothing from the last window, so the wait is to this window's end (50 s; the
        # message rounds up).
        assert (
            "Retry in 51 "
            in assert_error_shape(client.get("/api/cases/"), 429, "throttled")["message"]
        )
        # Half-way through the next window the last one's 3 weigh 1.5 (had the three
        # refused requests counted, 3 and this one would be refused).
        now[0] += 80
        assert client.get("/api/cases/").status_code == 200  # 1.5 + 1
        refused = assert_error_shape(client.get("/api/cases/"), 429, "throttled")  # 1.5 + 2
        # 0.5 over the limit; the last window's 3 lose 0.5 of weight in 10 s.
        assert "Retry in 11 " in refused["message"]
        now[0] += 10
        assert client.get("/api/cases/").status_code == 200
    finally:
        cache.clear()


def test_issue_token_prints_rotates_and_revokes(users) -> None:
    out = io.StringIO()
    call_command("issue_token", "u_admin", stdout=out)
    key = out.getvalue().strip()
    assert Token.objects.get(user=users["admin"]).key == key
    out = io.StringIO()
    call_command("issue_token", "u_admin", stdout=out)
    assert out.getvalue().strip() == key  # the same token until rotated
    out = io.StringIO()
    call_command("issue_token", "u_admin", "--rotate", stdout=out)
    assert out.getvalue().strip() != key
    call_command("issue_token", "u_admin", "--revoke", stdout=io.StringIO())
    assert not Token.objects.filter(user=users["admin"]).exists()
    with pytest.raises(CommandError, match="No user"):
        call_command("issue_token", "nobody", stdout=io.StringIO())


def test_admin_creates_users_in_a_role(admin_api) -> None:
    response = admin_api.post(
        "/api/users/",
        {"username": "new_heme", "password": "another-Long-pw-1", "role": "hematologist"},
        format="json",
    )
    assert response.status_code == 201 and response.json()["roles"] == ["hematologist"]
    bad = admin_api.post(
        "/api/users/", {"username": "x", "password": "short", "role": "boss"}, format="json"
    )
    assert set(assert_error_shape(bad, 400)["fields"]) == {"password", "role"}
    listing = admin_api.get("/api/users/").json()
    assert "new_heme" in {u["username"] for u in listing["results"]}
