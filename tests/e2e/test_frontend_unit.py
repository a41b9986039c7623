"""The frontend's own unit tests (Vitest: key mapping, queue prefetch, differential
arithmetic), so `make test` runs them too."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import IN_CI
from tests.paths import REPO_ROOT

FRONTEND = REPO_ROOT / "frontend"


def test_frontend_unit_tests_pass() -> None:
    npm = shutil.which("npm")
    if npm is None or not (FRONTEND / "node_modules").is_dir():
        message = "npm or frontend/node_modules is missing; run make setup"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(
        [npm, "test", "--silent"], cwd=FRONTEND, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
