"""The embedded default as a newcomer runs it (`make run`): SQLite and local files, no
Redis, tasks in the web server's background thread, the in-memory channel layer.

Each test migrates and seeds its own SQLite database in a separate interpreter (the
product's settings with DATABASE_URL and REDIS_URL unset) and serves it with uvicorn. In
Chromium: leaving the labelling screen, by another screen or by closing the tab, leaves
no lease held; a training started from the admin tab goes queued -> running -> succeeded
on screen without a reload. Without a browser: parallel releases all succeed on SQLite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import PASSWORD, api_json, screenshot, sign_in, wait_until
from tests.paths import REPO_ROOT
from tests.servers import serve

# Settings the test run itself uses that the embedded default must not see.
NOT_EMBEDDED = ("DATABASE_URL", "REDIS_URL", "WBC_DB_POOL", "MEDIA_ROOT", "WBC_DATA_DIR")
TINY_RETRAIN = "--epochs-finetune 1 --epochs-weak 1 --batch-size 8 --threads 1 --workers 0"
SMEAR = 6


def embedded_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NOT_EMBEDDED}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "wbcportal.settings",
            "WBC_DATA_DIR": str(data_dir),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "WBC_RETRAIN_ARGS": TINY_RETRAIN,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def seed_labelling(tmp: Path, shared_data: Path) -> None:
    """A hematologist, an admin, a tiny active model, SMEAR queued cells (segmented and
    scored in-process) and labelled cells to retrain on."""
    from tests.e2e.seed import labelled_training_set, queued_smear, users

    users()
    queued_smear(tmp, shared_data, SMEAR)
    labelled_training_set(tmp, shared_data, per_class=3)


def seed_leases(tmp: Path, shared_data: Path) -> None:
    """Three hematologists holding four leases each, and their API tokens in tokens.json."""
    from rest_framework.authtoken.models import Token

    from annotation.models import CellImage, ModelVersion
    from annotation.services.imports import cells_import
    from annotation.services.review_queue import review_items_next
    from annotation.services.routing import routing_config_update
    from annotation.services.users import user_create_with_role
    from mlworker.taxonomy import CODES
    from tests.annotation.helpers import copy_files, first_images
    from tests.e2e.seed import predict_ly_and_route

    copy_files(first_images(shared_data / "pbc" / "LY", 12), tmp / "cells")
    cells_import(source=tmp / "cells", case_name="LEASES-1", enqueue_processing=False)
    routing_config_update(user=None, audit_rate=0.0, confidence_threshold=0.99)
    version = ModelVersion.objects.create(
        name="seed-v1", arch="resnet18", class_codes=list(CODES), status="active"
    )
    predict_ly_and_route(list(CellImage.objects.order_by("id")), version)
    tokens = {}
    for name in ("hema1", "hema2", "hema3"):
        user = user_create_with_role(username=name, password=PASSWORD, role="hematologist")
        leased = review_items_next(user=user, count=4)
        assert len(leased) == 4, leased
        tokens[name] = {
            "token": Token.objects.get_or_create(user=user)[0].key,
            "items": [i.pk for i in leased],
        }
    (tmp / "tokens.json").write_text(json.dumps(tokens))


def _run(args: list[str], env: dict[str, str], what: str) -> None:
    result = subprocess.run(
        args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, (
        f"{what} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    )


@contextmanager
def embedded_site(
    tmp: Path, shared_data: Path, seed: Callable[[Path, Path], None]
) -> Iterator[str]:
    """Migrate and seed a fresh embedded install under ``tmp``, serve it, yield its URL."""
    env = embedded_env(tmp / "data")
    _run([sys.executable, "manage.py", "migrate", "--noinput"], env, "migrate")
    code = (
        "import django; django.setup(); from pathlib import Path; "
        f"from {__name__} import {seed.__name__} as seed; "
        f"seed(Path({str(tmp)!r}), Path({str(shared_data)!r}))"
    )
    _run([sys.executable, "-c", code], env, f"seeding ({seed.__name__})")
    with serve(env, tmp / "server.log") as url:
        assert _health(url)
        yield url


def _health(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health/", timeout=2) as response:
            body = json.loads(response.read())
    except OSError:
        return False
    assert body["broker"] == "in-process", body  # really the embedded default
    return True


@pytest.fixture
def context(browser: Any) -> Iterator[Callable[[str], Any]]:
    contexts = []

    def make(base_url: str) -> Any:
        # bypass_csp: Playwright's wait_for_function evaluates strings, which the
        # portal's Content-Security-Policy (no 'unsafe-eval') refuses.
        ctx = browser.new_context(
            base_url=base_url, viewport={"width": 1440, "height": 1000}, bypass_csp=True
        )
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(15_000)
        page.failed = []
        page.on("response", lambda r: r.status >= 500 and page.failed.append(f"{r.status} {r.url}"))
        page.on("console", lambda m: m.type == "error" and page.failed.append(m.text))
        return page

    yield make
    for ctx in contexts:
        ctx.close()


def leased(admin: Any) -> int:
    status, counts = api_json(admin, "GET", "/api/queue/counts/")
    assert status == 200, counts
    return int(counts["leased"])


def test_leaving_the_labelling_screen_leaves_no_lease_held(
    context: Callable[[str], Any], tmp_path: Path, shared_data: Path
) -> None:
    from mlworker.taxonomy import by_code
    from tests.e2e.test_labelling import press_and_wait_for_next

    with embedded_site(tmp_path, shared_data, seed_labelling) as url:
        admin = context(url)
        sign_in(admin, "boss")  # an admin lands on the cases, not the labelling screen,
        admin.get_by_test_id("case-table").wait_for()  # so signing in leases nothing
        assert leased(admin) == 0
        admin.goto("/#/admin/queue")
        page = context(url)
        sign_in(page, "hema")
        page.goto("/#/label")
        page.wait_for_function("document.querySelector('[data-testid=viewer]').dataset.cellId")
        for code in ("NE", "LY", "MO"):  # three labels, by the class keys
            press_and_wait_for_next(page, by_code(code).key)
        page.get_by_test_id("labelled-count").filter(has_text="3").wait_for()
        assert leased(admin) > 0  # the cell on screen and the ones prefetched behind it
        screenshot(page, "embedded-labelling")

        page.goto("/#/cases")  # another screen: the labelling screen gives its leases back
        wait_until(lambda: leased(admin) == 0, 15, "the leases to be given back")
        _, counts = api_json(admin, "GET", "/api/queue/counts/")
        assert counts["queued"] == SMEAR - 3, counts

        again = context(url)
        sign_in(again, "hema")
        again.goto("/#/label")
        again.wait_for_function("document.querySelector('[data-testid=viewer]').dataset.cellId")
        wait_until(lambda: leased(admin) > 0, 15, "the screen to lease cells")
        again.close()  # the tab is closed: pagehide gives the leases back
        wait_until(lambda: leased(admin) == 0, 15, "the leases to be given back on close")
        assert page.failed == [] and admin.failed == []


def test_training_from_the_admin_tab_goes_to_succeeded_without_a_reload(
    context: Callable[[str], Any], tmp_path: Path, shared_data: Path
) -> None:
    with embedded_site(tmp_path, shared_data, seed_labelling) as url:
        page = context(url)
        sign_in(page, "boss")
        page.goto("/#/admin/training")
        page.evaluate("window.__sameDocument = true")  # gone if the page reloads
        page.get_by_test_id("trigger-training").click()
        started = time.monotonic()
        with page.expect_response(
            lambda r: r.url.endswith("/api/training-jobs/") and r.request.method == "POST"
        ) as posted:
            page.get_by_role("dialog").get_by_role("button", name="Start retraining").click()
        answer = posted.value
        answered_in = time.monotonic() - started
        assert answer.status == 201 and answer.json()["status"] == "queued"
        # Progress while it runs: the stage and a percentage, over the websocket.
        page.wait_for_selector("[data-testid=job][data-status=running]", timeout=120_000)
        assert page.get_by_test_id("job-stage").inner_text() != "Stage: waiting for a worker"
        screenshot(page, "embedded-training-running")
        page.wait_for_selector(
            "[data-testid=job][data-status=succeeded], [data-testid=job][data-status=failed]",
            timeout=300_000,
        )
        trained_in = time.monotonic() - started
        job = page.get_by_test_id("job")
        screenshot(page, "embedded-training-done")
        assert job.get_attribute("data-status") == "succeeded", job.inner_text()
        assert page.get_by_test_id("progress").get_attribute("value") == "100"
        assert "candidate" in page.get_by_test_id("job-result").inner_text()
        assert page.evaluate("window.__sameDocument") is True  # no reload
        assert answered_in < trained_in / 2, (answered_in, trained_in)  # it did not wait
        assert page.failed == []


def _post(url: str, path: str, token: str, body: Any = None) -> int:
    request = urllib.request.Request(
        f"{url}{path}",
        data=json.dumps(body or {}).encode(),
        method="POST",
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_parallel_releases_all_succeed_on_sqlite(tmp_path: Path, shared_data: Path) -> None:
    with embedded_site(tmp_path, shared_data, seed_leases) as url:
        tokens = json.loads((tmp_path / "tokens.json").read_text())
        calls: list[tuple[str, Any]] = []
        for name in ("hema1", "hema2"):  # the old way: one request per lease, all at once
            for item in tokens[name]["items"]:
                calls.append((f"/api/queue/items/{item}/release/", (tokens[name]["token"], None)))
        batch = tokens["hema3"]  # and one batched call at the same time
        calls.append(("/api/queue/release/", (batch["token"], {"item_ids": batch["items"]})))
        with ThreadPoolExecutor(max_workers=len(calls)) as pool:
            statuses = list(pool.map(lambda c: _post(url, c[0], *c[1]), calls))
        assert statuses == [204] * 8 + [200], statuses
        counts_request = urllib.request.Request(
            f"{url}/api/queue/counts/",
            headers={"Authorization": f"Token {batch['token']}"},
        )
        with urllib.request.urlopen(counts_request, timeout=10) as response:
            counts = json.loads(response.read())
        assert counts["leased"] == 0 and counts["queued"] == 12, counts
