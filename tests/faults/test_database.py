"""PostgreSQL lost mid-request or altogether: the web app answers 503 in its one error
shape with a message that says what to do, writes nothing half-way, and the next request
after the database is back works. The server is a real uvicorn process; the connection is
killed from the database side (pg_terminate_backend), as a restart or failover does."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from rest_framework.authtoken.models import Token

from annotation.models import AuditEvent, Case
from tests.conftest import _test_database_url
from tests.faults.servers import free_port, http, web_server

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def server(redis_url: str, tmp_path: Path, settings: Any, transactional_db: None):
    with web_server(
        redis_url=redis_url, media_root=Path(str(settings.MEDIA_ROOT)), log=tmp_path / "web.log"
    ) as url:
        yield url


def _require_postgres() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (DATABASE_URL): the fault is a PostgreSQL backend killed")


def _kill_the_request_waiting_on(table: str, send: Any) -> dict[str, Any]:
    """Run ``send`` in a thread while ``table`` is locked; once the request's database
    session waits on the lock, terminate that session. Returns what ``send`` returned."""
    import psycopg

    result: dict[str, Any] = {}
    with psycopg.connect(_test_database_url()) as locker:
        locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        thread = threading.Thread(target=lambda: result.update(response=send()))
        thread.start()
        deadline = time.monotonic() + 30
        pid = None
        while pid is None and time.monotonic() < deadline:
            row = locker.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            ).fetchone()
            pid = row[0] if row else None
            time.sleep(0.05)
        assert pid is not None, "the request never reached the locked table"
        locker.execute("SELECT pg_terminate_backend(%s)", [pid])
        thread.join(30)
        locker.rollback()  # releases the lock
    return result


def test_connection_killed_during_a_write_is_a_503_and_nothing_is_half_written(
    server: str, users: dict[str, Any]
) -> None:
    _require_postgres()
    token = Token.objects.get_or_create(user=users["admin"])[0].key
    events_before = AuditEvent.objects.count()
    body = {"accession_id": "FAULT-1"}
    # The case row is inserted, then its audit record waits on the lock and the
    # session is killed: the two were in one transaction, so neither may remain.
    result = _kill_the_request_waiting_on(
        "annotation_auditevent",
        lambda: http("POST", f"{server}/api/cases/", token=token, body=body),
    )
    status, headers, raw = result["response"]
    assert status == 503, raw
    error = json.loads(raw)["error"]
    assert error["code"] == "database_unavailable"
    assert "try again" in error["message"] and "nothing was saved" in error["message"]
    assert headers.get("retry-after")
    assert not Case.objects.filter(accession_id="FAULT-1").exists()
    assert AuditEvent.objects.count() == events_before

    status, _, raw = http("POST", f"{server}/api/cases/", token=token, body=body)
    assert status == 201, raw
    assert Case.objects.filter(accession_id="FAULT-1").count() == 1


def test_connection_killed_during_a_page_is_a_503_page(server: str, users: dict[str, Any]) -> None:
    _require_postgres()
    from django.test import Client

    from tests.annotation.api.conftest import PASSWORD

    browser = Client()
    assert browser.login(username="u_hematologist", password=PASSWORD)
    cookie = f"sessionid={browser.cookies['sessionid'].value}"

    def get_home() -> tuple[int, dict[str, str], bytes]:
        import urllib.request

        request = urllib.request.Request(f"{server}/", headers={"Cookie": cookie})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    result = _kill_the_request_waiting_on("django_session", get_home)
    status, _, raw = result["response"]
    assert status == 503, raw[:500]
    assert b"Database unavailable" in raw and b"try again" in raw
    assert get_home()[0] == 200


def test_database_unreachable_health_says_so_and_every_request_is_a_clear_503(
    redis_url: str, tmp_path: Path, settings: Any, users: dict[str, Any]
) -> None:
    token = Token.objects.get_or_create(user=users["admin"])[0].key
    dead = f"postgres://postgres@127.0.0.1:{free_port()}/nowhere"  # nothing listens there
    with web_server(
        redis_url=redis_url,
        media_root=Path(str(settings.MEDIA_ROOT)),
        log=tmp_path / "web.log",
        extra_env={"DATABASE_URL": dead},
    ) as url:
        status, _, raw = http("GET", f"{url}/health/")
        health = json.loads(raw)
        assert status == 503 and health["status"] == "error"
        assert health["database"] == "unavailable"
        assert "127.0.0.1" not in raw.decode()  # no connection details for anonymous callers
        status, _, raw = http("GET", f"{url}/api/cases/", token=token)
        assert status == 503 and json.loads(raw)["error"]["code"] == "database_unavailable"
        status, _, raw = http("GET", f"{url}/accounts/login/")
        assert status == 200  # the sign-in form needs no database until it is sent
        status, _, raw = http("GET", f"{url}/api/no-such-thing/")
        assert status == 404
