"""No secret in the repository, and none in the logs: private keys, hard-coded secret
keys and tokens are looked for in every tracked file; a sign-in, a token's use and failed
sign-ins are run with every logger at DEBUG, and no password, token key or SECRET_KEY may
appear in what they log (nor in the audit trail)."""

from __future__ import annotations

import logging
import re
import subprocess

import pytest
from django.conf import settings
from django.test import Client
from rest_framework.test import APIClient

from annotation.models import AuditEvent
from tests.paths import REPO_ROOT

BEGIN = "-----BEGIN"  # split so this file does not match its own pattern
SECRET_PATTERNS = {
    "private key": re.compile(BEGIN + r" (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY"),
    "AWS access key": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "API token in a header": re.compile(r"Token [0-9a-f]{40}\b"),
    "hard-coded secret key": re.compile(
        r"""(?i)\b\w*SECRET\w*\s*[:=]\s*["']?(?!dev-only-insecure|change-me|\$\{)([^\s"'$]{16,})"""
    ),
}


# Outside a git checkout (an unpacked release), every file but these is checked.
NOT_SOURCE = {".git", ".venv", "node_modules", "data", "runs", "test-artifacts", "static"}


def tracked_text_files() -> list[str]:
    if not (REPO_ROOT / ".git").exists():
        return [
            p.relative_to(REPO_ROOT).as_posix()
            for p in REPO_ROOT.rglob("*")
            if p.is_file()
            and not NOT_SOURCE & set(p.relative_to(REPO_ROOT).parts)
            and not any(part.endswith("_cache") for part in p.parts)
        ]
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout
    return [name for name in out.decode().split("\0") if name]


def test_no_secret_is_committed() -> None:
    files = tracked_text_files()
    assert "wbcportal/settings.py" in files  # the listing works
    found = []
    for name in files:
        path = REPO_ROOT / name
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        data = path.read_bytes()
        if b"\0" in data[:8000]:
            continue  # binary (images, checkpoints)
        text = data.decode("utf-8", errors="replace")
        for kind, pattern in SECRET_PATTERNS.items():
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{name}:{line}: {kind}")
    assert not found, "secrets in tracked files:\n" + "\n".join(found)


def test_the_patterns_find_what_they_look_for() -> None:
    samples = {
        "private key": BEGIN + " RSA PRIVATE KEY-----",
        # built from pieces, so this file does not hold the samples it tests with
        "AWS access key": "aws_key = AKIA" + "IOSFODNN7EXAMPLE",
        "API token in a header": "Authorization: Token " + "ab12" * 10,
        "hard-coded secret key": "SECRET" + '_KEY = "k8s#2@x9!v0qzp4m1r7w"',
    }
    for kind, sample in samples.items():
        assert SECRET_PATTERNS[kind].search(sample), kind
    allowed = "SECRET_KEY=change-me-to-a-long-random-string\nSECRET_KEY: ${SECRET_KEY:?set}"
    assert not SECRET_PATTERNS["hard-coded secret key"].search(allowed)


@pytest.mark.django_db
def test_sign_in_token_use_and_failures_log_no_secret(users, caplog) -> None:
    from tests.annotation.api.conftest import PASSWORD

    caplog.set_level(logging.DEBUG)
    for name in ("django", "django.request", "django.security", "annotation", "wbcportal"):
        caplog.set_level(logging.DEBUG, logger=name)
    browser = Client()
    assert (
        browser.post(
            "/accounts/login/", {"username": "u_hematologist", "password": PASSWORD}
        ).status_code
        == 302
    )
    wrong_password = "Wr0ng-but-close-" + PASSWORD
    assert (
        browser.post(
            "/accounts/login/", {"username": "u_admin", "password": wrong_password}
        ).status_code
        == 200
    )
    api = APIClient()
    token = api.post("/api/auth/token/", {"username": "u_admin", "password": PASSWORD}).json()
    key = token["token"]
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api.get("/api/auth/me/").status_code == 200
    assert api.get("/api/no-such-endpoint/").status_code == 404  # logged as a warning
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION=f"Token {key[:-4]}beef")
    assert bad.get("/api/cases/").status_code == 401
    assert (
        APIClient()
        .post("/api/auth/token/", {"username": "u_admin", "password": wrong_password})
        .status_code
        == 400
    )

    logged = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    assert caplog.records, "nothing was logged: the capture is not working"
    for secret in (PASSWORD, wrong_password, key, key[:-4] + "beef", settings.SECRET_KEY):
        assert secret not in logged
    audit = "\n".join(f"{e.target_id} {e.before} {e.after}" for e in AuditEvent.objects.all())
    assert "login.failed" in set(AuditEvent.objects.values_list("action", flat=True))
    for secret in (PASSWORD, wrong_password, key):
        assert secret not in audit
