"""Every URL the app routes refuses anonymous users, except the sign-in pages and the
health check. The URLs come from the resolver itself (API, HTML pages, /media/, the admin
site) and from the websocket router, so a URL added later is covered without editing
this file."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from django.urls.resolvers import RegexPattern, RoutePattern
from django.utils.regex_helper import normalize
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

# Open to anonymous users on purpose: the ways to sign in, and the load balancer's probe.
OPEN = {"/accounts/login/", "/admin/login/", "/api/auth/token/", "/health/"}
SAMPLES = ("1", "annotation", "auth", "cells/ab/x.jpg", "x")


def _sample(pattern: Any) -> str:
    """A concrete piece of URL that ``pattern`` matches."""
    if isinstance(pattern, RoutePattern):
        route = str(pattern._route)
        values = {"int": "1", "path": "cells/ab/x.jpg", "slug": "x", "uuid": "0" * 32}
        return re.sub(r"<(?:(\w+):)?(\w+)>", lambda m: values.get(m.group(1) or "str", "x"), route)
    assert isinstance(pattern, RegexPattern), pattern
    regex = pattern.regex
    for template, params in normalize(regex.pattern):
        for value in SAMPLES:
            candidate = template % dict.fromkeys(params, value)
            if regex.match(candidate) and (
                not regex.pattern.endswith("$") or regex.fullmatch(candidate)
            ):
                return candidate
    raise AssertionError(f"no sample path for {regex.pattern!r}; add a value to SAMPLES")


def every_url() -> Iterator[tuple[str, Any]]:
    """(a concrete path, the view) for every URL pattern, however deeply included."""

    def walk(patterns: list[Any], prefix: str) -> Iterator[tuple[str, Any]]:
        for p in patterns:
            here = prefix + _sample(p.pattern)
            if isinstance(p, URLResolver):
                yield from walk(p.url_patterns, here)
            elif isinstance(p, URLPattern):
                yield "/" + here, p.callback

    seen = set()
    for path, callback in walk(get_resolver().url_patterns, ""):
        if path not in seen:
            seen.add(path)
            yield path, callback


def test_the_walk_finds_the_api_html_media_and_admin_urls() -> None:
    paths = {path for path, _ in every_url()}
    for expected in ("/", "/media/cells/ab/x.jpg", "/api/cases/", "/api/cells/1/image/",
                     "/admin/", "/admin/annotation/", "/accounts/logout/", "/api/schema/"):  # fmt: skip
        assert expected in paths, expected
    # every sample path really resolves to the pattern it was made from
    for path, callback in every_url():
        assert resolve(path).func == callback, path


def _refused(client: APIClient, path: str, response: Any) -> bool:
    status = response.status_code
    if status in (401, 403, 405):
        return True
    for _ in range(3):  # the HTML pages send an anonymous user (maybe via /admin/) to sign in
        if response.status_code not in (301, 302):
            break
        location = response.get("Location", "")
        if location.split("?")[0] in OPEN and "/login/" in location:
            return True
        response = client.get(location)
    # Only the catch-all routes (unknown /api/ or admin URLs) may answer 404.
    return status == 404 and resolve(path).url_name in ("not-found", None)


def test_anonymous_users_are_refused_every_url_but_sign_in_and_health(users) -> None:
    client = APIClient(enforce_csrf_checks=False)
    failures = []
    for path, _ in every_url():
        if path in OPEN:
            continue
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            response = getattr(client, method.lower())(path)
            if not _refused(client, path, response):
                failures.append(f"{method} {path}: {response.status_code}")
    assert not failures, "open to anonymous users:\n" + "\n".join(failures)


def test_the_open_urls_give_nothing_away(users) -> None:
    client = APIClient()
    assert client.get("/health/").json()["status"] == "ok"
    assert client.get("/accounts/login/").status_code == 200
    refused = client.post("/api/auth/token/", {"username": "u_admin", "password": "x"})
    assert refused.status_code == 400 and "token" not in refused.json()


@pytest.mark.django_db(transaction=True)  # the consumer reads the session in another thread
def test_the_websocket_refuses_anonymous_users_and_accepts_signed_in_ones(users) -> None:
    from channels.testing import WebsocketCommunicator

    from annotation.routing import websocket_urlpatterns
    from tests.annotation.api.conftest import PASSWORD
    from wbcportal.asgi import application

    browser = APIClient()
    assert browser.login(username="u_hematologist", password=PASSWORD)
    session_cookie = f"sessionid={browser.cookies['sessionid'].value}".encode()

    async def connect(path: str, cookie: bytes | None) -> tuple[bool, Any]:
        headers = [(b"origin", b"http://testserver"), (b"host", b"testserver")]
        if cookie:
            headers.append((b"cookie", cookie))
        communicator = WebsocketCommunicator(application, path, headers=headers)
        connected, code = await communicator.connect(timeout=5)
        await communicator.disconnect()
        return connected, code

    def run(coro: Any) -> Any:
        # In a thread of its own: an earlier test (Playwright's sync API) may have left an
        # event loop running in this one, where asyncio.run() refuses to start.
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, coro).result()

    for pattern in websocket_urlpatterns:
        path = "/" + _sample(pattern.pattern)
        connected, code = run(connect(path, None))
        assert not connected and code == 4401, f"{path} accepted an anonymous user"
        connected, _ = run(connect(path, session_cookie))
        assert connected, f"{path} refused a signed-in user"
