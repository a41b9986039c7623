"""Browser tests: Debian's Chromium (headless, driven by Playwright for Python) against a
live uvicorn server on the pytest-django PostgreSQL database, with Redis and a real
Celery worker (tests/conftest.py). Screenshots go to test-artifacts/e2e/."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI, require_service
from tests.paths import REPO_ROOT
from tests.servers import free_port, uvicorn_server

# Playwright's sync API runs an event loop on the test's thread; Django would then refuse
# ORM calls made by the test itself (seeding, checks) as "async unsafe". They are not
# concurrent with anything, so allow them in these tests.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = Path(os.environ.get("WBC_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "e2e"
BUNDLE = REPO_ROOT / "frontend" / "static" / "app" / "app.js"
PASSWORD = "Long-enough-pass-1"


def _ensure_bundle() -> None:
    """The UI bundle is built by `make setup`; build it here when it is missing."""
    if BUNDLE.exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(
            "frontend/static/app/app.js is missing and npm is not installed; run make setup"
        )
    frontend = REPO_ROOT / "frontend"
    if not (frontend / "node_modules").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=frontend, check=True)
    subprocess.run([npm, "run", "build"], cwd=frontend, check=True)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    require_service(f"Chromium ({CHROMIUM})", CHROMIUM.exists())
    _ensure_bundle()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def live_server_url(
    redis_url: str, tmp_path: Path, settings: Any, transactional_db: None
) -> Iterator[str]:
    """uvicorn (HTTP and websockets) on a free loopback port, on the test database and
    this test's media folder."""
    port = free_port()
    log = tmp_path / "server.log"
    try:
        with uvicorn_server(
            redis_url=redis_url,
            media_root=Path(str(settings.MEDIA_ROOT)),
            log=log,
            port=port,
            extra_env={"ALLOWED_HOSTS": "127.0.0.1,localhost"},
        ) as url:
            yield url
    finally:
        if IN_CI and log.exists():
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, ARTIFACTS / f"server-{port}.log")


@pytest.fixture
def new_page(browser: Any, live_server_url: str) -> Iterator[Any]:
    """A fresh browser context (its own cookies) per call; console errors and failed
    responses are collected on ``page.console_errors``."""
    contexts = []

    def make(*, enforce_csp: bool = False) -> Any:
        # Playwright's string predicates (wait_for_function) are evaluated like eval(),
        # which the portal's Content-Security-Policy forbids; tests/e2e/test_csp.py opens
        # its pages with the policy enforced and checks that no screen violates it.
        context = browser.new_context(
            base_url=live_server_url,
            viewport={"width": 1440, "height": 1000},
            bypass_csp=not enforce_csp,
        )
        contexts.append(context)
        page = context.new_page()
        page.console_errors = []
        page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
        page.on("pageerror", lambda e: page.console_errors.append(str(e)))
        page.on(
            "response",
            lambda r: (
                r.status >= 400
                and page.console_errors.append(f"{r.status} {r.request.method} {r.url}")
            ),
        )
        page.set_default_timeout(15_000)
        return page

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def queue_beat(transactional_db: None) -> Iterator[None]:
    """What Celery beat does for the browser: send the review-queue counts when they
    changed (annotation/tasks/housekeeping.py), here every half second from a
    thread (the test's own thread runs Playwright's event loop)."""
    from django.db import connection

    from annotation.services.events import queue_counts_flush

    stop = threading.Event()

    def run() -> None:
        try:
            while not stop.wait(0.5):
                queue_counts_flush()
        finally:
            connection.close()

    thread = threading.Thread(target=run, name="queue-beat", daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=10)


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page: Any, username: str, password: str = PASSWORD) -> None:
    page.goto("/accounts/login/?next=/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("[data-testid=user]")
    assert page.get_by_test_id("user").inner_text() == username


def api_json(page: Any, method: str, path: str, data: Any = None) -> tuple[int, Any]:
    """Call the API with the page's session (and its CSRF token), as the UI does."""
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    headers = {"X-CSRFToken": cookies.get("csrftoken", ""), "Referer": page.url}
    response = page.request.fetch(path, method=method, headers=headers, data=data)
    try:
        body = response.json()
    except Exception:
        body = None
    return response.status, body


def wait_until(condition: Any, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tail}")
