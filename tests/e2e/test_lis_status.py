"""The LIS delivery status on the case screen, in Chromium: a case signed while the FHIR
receiver refuses the message shows "failed" with the receiver's reason, the HL7 receiver
being down shows "retrying" with its attempts, and an admin's "Send again" delivers it
once the receiver accepts. The web server and a real Celery worker are configured for
real receivers on loopback (tests/annotation/lis_receivers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from annotation.models import Case, LisDelivery, ReviewRules
from annotation.services.imports import cells_import
from tests.annotation.helpers import copy_files, first_images
from tests.annotation.lis_receivers import FhirReceiver, refusing_port
from tests.conftest import start_worker, wait_for_worker
from tests.e2e.conftest import PASSWORD, api_json, screenshot, sign_in, wait_until
from tests.e2e.seed import users
from tests.processes import stop_process
from tests.servers import free_port, uvicorn_server


@pytest.fixture
def lis_world(
    redis_url: str, tmp_path: Path, settings: Any, transactional_db: None
) -> Iterator[dict[str, Any]]:
    """A FHIR receiver that refuses at first, an HL7 port that refuses connections, and the
    web server and a worker configured for both."""
    from wbcportal.celery import app

    fhir = FhirReceiver(status=422, outcome="Order LIS-E2E is not known to the LIS").start()
    hl7_down = refusing_port()
    env = {
        "WBC_LIS_FHIR_URL": fhir.url,
        "WBC_LIS_HL7_HOST": "127.0.0.1",
        "WBC_LIS_HL7_PORT": str(hl7_down.getsockname()[1]),
        "WBC_LIS_TIMEOUT_SECONDS": "3",
        "WBC_LIS_RETRY_BACKOFF_SECONDS": "2",
        "WBC_LIS_MAX_RETRIES": "30",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
    }
    app.conf.task_always_eager = False
    app.conf.broker_url = redis_url
    media = Path(str(settings.MEDIA_ROOT))
    worker_log = tmp_path / "worker.log"
    worker = start_worker(redis_url, media_root=media, log=worker_log, extra_env=env)
    try:
        wait_for_worker(app, worker, worker_log)
        with uvicorn_server(
            redis_url=redis_url,
            media_root=media,
            log=tmp_path / "server.log",
            port=free_port(),
            extra_env=env,
        ) as url:
            yield {"url": url, "fhir": fhir, "worker_log": worker_log}
    finally:
        stop_process(worker)
        fhir.stop()
        hl7_down.close()


@pytest.fixture
def lis_page(browser: Any, lis_world: dict[str, Any]) -> Iterator[Any]:
    """A fresh browser context (its own session) per call."""
    contexts: list[Any] = []

    def make() -> Any:
        context = browser.new_context(
            base_url=lis_world["url"], viewport={"width": 1440, "height": 1000}, bypass_csp=True
        )
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(20_000)
        return page

    yield make
    for context in contexts:
        context.close()


def row(page: Any, kind: str) -> Any:
    return page.get_by_test_id(f"lis-delivery-1-{kind}")


def test_lis_delivery_status_shows_failed_retrying_and_an_admin_resends(
    lis_world: dict[str, Any], lis_page: Any, tmp_path: Path, shared_data: Path
) -> None:
    users()
    ReviewRules.objects.update_or_create(pk=1, defaults={"count_target": 0})
    root = tmp_path / "LIS-E2E"
    for code, n in {"NE": 3, "LY": 2}.items():
        copy_files(first_images(shared_data / "pbc" / code, n), root / code)
    cells_import(source=root, case_name="LIS-E2E", enqueue_processing=False)
    case = Case.objects.get(accession_id="LIS-E2E")
    page = lis_page()
    sign_in(page, "hema")
    page.goto(f"/#/cases/{case.pk}")
    panel = page.get_by_test_id("lis-status")
    panel.wait_for()
    assert "when the case is signed" in panel.inner_text()
    status, body = api_json(page, "POST", f"/api/cases/{case.pk}/sign-off/", {"password": PASSWORD})
    assert status == 200, body
    page.reload()
    fhir_row = row(page, "fhir")
    fhir_row.and_(page.locator("[data-status=failed]")).wait_for()
    assert "Order LIS-E2E is not known to the LIS" in fhir_row.inner_text()
    assert "422" in fhir_row.inner_text()
    # The HL7 receiver is down: retried with backoff, the row says how often and why.
    hl7_row = row(page, "hl7")
    hl7_row.and_(page.locator("[data-status=retrying]")).wait_for()
    assert "cannot reach" in hl7_row.inner_text()
    assert page.get_by_role("button", name="Send again").count() == 0  # not an admin
    screenshot(page, "lis-status-failed-and-retrying")

    # The LIS learns the order; an admin sends the failed message again.
    lis_world["fhir"].status = 200
    page = lis_page()
    sign_in(page, "boss")
    page.goto(f"/#/cases/{case.pk}")
    fhir_row = row(page, "fhir")
    fhir_row.get_by_role("button", name="Send again").click()
    fhir_row.and_(page.locator("[data-status=sent]")).wait_for()
    assert "accepted" in fhir_row.inner_text()
    wait_until(
        lambda: LisDelivery.objects.get(kind="hl7").attempts >= 2,
        30,
        "a second HL7 attempt",
        lis_world["worker_log"],
    )
    page.reload()
    assert "attempts" in row(page, "hl7").inner_text()
    screenshot(page, "lis-status-resent")
    received = lis_world["fhir"].received
    assert len(received) == 2 and received[0]["body"] == received[1]["body"]
    assert LisDelivery.objects.get(kind="fhir").status == "sent"
