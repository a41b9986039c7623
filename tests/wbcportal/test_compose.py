"""docker-compose.yml is valid and describes the production topology."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.conftest import IN_CI
from tests.paths import REPO_ROOT


def compose_config() -> dict:
    exe = shutil.which("docker-compose")
    if exe is None:
        if IN_CI:
            pytest.fail("docker-compose is missing; `make setup` installs it")
        pytest.skip("docker-compose is not installed (make setup installs it)")
    result = subprocess.run(
        [exe, "-f", "docker-compose.yml", "--env-file", ".env.example", "config"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_file_validates_and_has_every_service() -> None:
    config = compose_config()
    services = config["services"]
    assert set(services) >= {"postgres", "redis", "web", "worker-cpu", "worker-gpu", "beat"}
    assert "-Q" in services["worker-cpu"]["command"] and "cpu" in services["worker-cpu"]["command"]
    assert "gpu" in services["worker-gpu"]["command"]
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    for name in ("web", "worker-cpu", "worker-gpu", "beat"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://")
        assert env["REDIS_URL"].startswith("redis://")
        assert env["WBC_ENV"] == "production"
    assert {"pgdata", "media"} <= set(config["volumes"])


def test_only_the_tls_proxy_is_published() -> None:
    """WBC_ENV=production redirects plain HTTP to HTTPS, so the web server must sit behind
    the TLS proxy that compose ships, and publish no plain-HTTP port of its own."""
    services = compose_config()["services"]
    assert not services["web"].get("ports")
    assert "--proxy-headers" in services["web"]["command"]
    proxy = services["proxy"]
    assert proxy["image"].startswith("caddy:")
    assert "--to web:8000" in proxy["command"] and "https://" in proxy["command"]
    assert {p["target"] for p in proxy["ports"]} == {443, 80}
    published = [name for name, s in services.items() if s.get("ports")]
    assert published == ["proxy"]
