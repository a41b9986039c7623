"""Settings come from the environment alone; each case runs in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.paths import REPO_ROOT

PROBE = """
import json, django
from django.conf import settings
django.setup()
from wbcportal.celery import app
print(json.dumps({
    "engine": settings.DATABASES["default"]["ENGINE"],
    "db_name": str(settings.DATABASES["default"]["NAME"]),
    "eager": app.conf.task_always_eager,
    "broker": app.conf.broker_url,
    "queues": sorted(q.name for q in app.conf.task_queues),
    "layer": settings.CHANNEL_LAYERS["default"]["BACKEND"],
    "media": str(settings.MEDIA_ROOT),
    "debug": settings.DEBUG,
    "hosts": settings.ALLOWED_HOSTS,
    "secret_is_dev": settings.SECRET_KEY.startswith("dev-only"),
}))
"""

KEYS = (
    "DATABASE_URL",
    "REDIS_URL",
    "SECRET_KEY",
    "DEBUG",
    "ALLOWED_HOSTS",
    "WBC_DATA_DIR",
    "MEDIA_ROOT",
    "WBC_ENV",
)


def probe(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in KEYS}
    base["DJANGO_SETTINGS_MODULE"] = "wbcportal.settings"
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**base, **env},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_no_environment_gives_the_embedded_default(tmp_path) -> None:
    result = probe({"WBC_DATA_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    cfg = json.loads(result.stdout)
    assert cfg["engine"] == "django.db.backends.sqlite3"
    assert cfg["db_name"].startswith(str(tmp_path))
    assert cfg["eager"] is True and cfg["broker"] == "memory://"
    assert cfg["layer"] == "channels.layers.InMemoryChannelLayer"
    assert cfg["media"] == str(tmp_path / "media")
    assert cfg["debug"] is False and cfg["secret_is_dev"] is True


def test_database_and_redis_urls_switch_to_postgres_and_redis() -> None:
    result = probe(
        {
            "DATABASE_URL": "postgres://u:p@db.example:5432/wbc",
            "REDIS_URL": "redis://cache.example:6379/2",
            "SECRET_KEY": "s3cret-from-env",
            "ALLOWED_HOSTS": "wbc.lab.example, localhost",
            "DEBUG": "true",
        }
    )
    assert result.returncode == 0, result.stderr
    cfg = json.loads(result.stdout)
    assert cfg["engine"] == "django.db.backends.postgresql" and cfg["db_name"] == "wbc"
    assert cfg["eager"] is False and cfg["broker"] == "redis://cache.example:6379/2"
    assert cfg["queues"] == ["cpu", "gpu"]
    assert cfg["layer"] == "channels_redis.core.RedisChannelLayer"
    assert cfg["hosts"] == ["wbc.lab.example", "localhost"]
    assert cfg["debug"] is True and cfg["secret_is_dev"] is False


def test_production_refuses_to_start_without_a_secret() -> None:
    result = probe({"WBC_ENV": "production"})
    assert result.returncode != 0
    assert "needs SECRET_KEY" in result.stderr


def test_a_malformed_boolean_is_a_clear_error() -> None:
    result = probe({"DEBUG": "maybe"})
    assert result.returncode != 0 and "DEBUG='maybe' is not a boolean" in result.stderr


@pytest.mark.django_db
def test_ci_runs_on_postgresql() -> None:
    from django.db import connection

    from tests.conftest import IN_CI, require_service

    require_service("PostgreSQL (DATABASE_URL)", connection.vendor == "postgresql" or not IN_CI)
    if os.environ.get("DATABASE_URL"):
        assert connection.vendor == "postgresql"
