"""Sign-in attempts are limited per username and client address: after 5 failures within
15 minutes the pair is locked out (429 with when to retry), on the HTML form, the admin
site's form and the token endpoint alike, and every lockout is audited."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from django.core.cache import cache
from django.test import Client
from rest_framework.test import APIClient

from annotation.models import AuditEvent
from tests.annotation.api.conftest import PASSWORD
from tests.annotation.api.test_errors_and_auth import assert_error_shape

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_counters(settings) -> Iterator[None]:
    # A fast hasher (set before the users fixture hashes their passwords): dozens of
    # sign-ins here, and only the counting is under test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    cache.clear()
    yield
    cache.clear()


def token_login(password: str, *, username: str = "u_hematologist", address: str = "10.0.0.1"):
    return APIClient(REMOTE_ADDR=address).post(
        "/api/auth/token/", {"username": username, "password": password}
    )


def form_login(password: str, *, username: str = "u_hematologist", address: str = "10.0.0.1"):
    return Client(REMOTE_ADDR=address).post(
        "/accounts/login/", {"username": username, "password": password}
    )


def test_token_endpoint_locks_out_after_five_failures_and_says_when(users) -> None:
    for _ in range(4):
        assert_error_shape(token_login("wrong"), 400, "invalid")
    fifth = token_login("wrong")
    error = assert_error_shape(fifth, 429, "login_locked")
    assert "Try again in 15 min" in error["message"]
    assert int(fifth["Retry-After"]) > 800
    # the right password does not help while locked out ...
    assert_error_shape(token_login(PASSWORD), 429, "login_locked")
    # ... but another address, or another account from this address, is not affected
    assert token_login(PASSWORD, address="10.0.0.2").status_code == 200
    assert token_login(PASSWORD, username="u_admin").status_code == 200
    event = AuditEvent.objects.get(action="login.locked")
    assert event.after["username"] == "u_hematologist"
    assert event.after["remote_addr"] == "10.0.0.1"


def test_html_sign_in_form_locks_out_with_a_form_error(users) -> None:
    for _ in range(4):
        page = form_login("wrong")
        assert page.status_code == 200 and b"do not match" in page.content
    locked = form_login("wrong")
    assert locked.status_code == 429
    assert b"Too many failed sign-ins" in locked.content and b"Try again in" in locked.content
    refused = form_login(PASSWORD)
    assert refused.status_code == 429 and "_auth_user_id" not in refused.client.session
    assert AuditEvent.objects.filter(action="login.locked").count() == 1
    # the lock is per username and address, shared by every way of signing in
    assert_error_shape(token_login(PASSWORD), 429, "login_locked")


def test_admin_site_sign_in_is_throttled_too(users) -> None:
    browser = Client(REMOTE_ADDR="10.0.0.9")
    for _ in range(5):
        browser.post("/admin/login/", {"username": "u_admin", "password": "wrong"})
    page = browser.post("/admin/login/", {"username": "u_admin", "password": PASSWORD})
    assert b"Too many failed sign-ins" in page.content
    assert "_auth_user_id" not in browser.session


def test_a_successful_sign_in_clears_the_count(users) -> None:
    for _ in range(4):
        token_login("wrong")
    assert token_login(PASSWORD).status_code == 200
    for _ in range(4):
        assert token_login("wrong").status_code == 400
    assert not AuditEvent.objects.filter(action="login.locked").exists()


def test_the_lockout_ends_after_the_window(users, settings) -> None:
    settings.WBC_LOGIN_WINDOW_SECONDS = 2
    for _ in range(5):
        token_login("wrong")
    assert token_login(PASSWORD).status_code == 429
    time.sleep(2.5)
    assert token_login(PASSWORD).status_code == 200


def test_refused_attempts_do_not_prolong_the_lockout(users, settings) -> None:
    settings.WBC_LOGIN_WINDOW_SECONDS = 2
    for _ in range(5):
        token_login("wrong")
    time.sleep(1)
    for password in ("wrong", "wrong", PASSWORD):
        assert_error_shape(token_login(password), 429, "login_locked")
    time.sleep(1.5)
    assert token_login(PASSWORD).status_code == 200
    assert AuditEvent.objects.filter(action="login.locked").count() == 1


def test_an_overlong_username_is_refused_not_an_error(users) -> None:
    # The token endpoint takes any length; the lockout's table holds 255 characters.
    for _ in range(4):
        assert_error_shape(token_login("wrong", username="x" * 300), 400, "invalid")
    assert_error_shape(token_login("wrong", username="x" * 300), 429, "login_locked")
