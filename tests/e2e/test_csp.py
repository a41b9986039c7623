"""The portal's pages work under their Content-Security-Policy: every screen an admin
can open (labelling, cases and a case's gallery of cell images, adjudication, each admin
tab) loads in Chromium with the policy on and the browser reports no violation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import sign_in
from tests.e2e.seed import labelled_case, users

# Recorded before any page script runs (Playwright's init scripts are not subject to the
# page's CSP), so a violation during load is seen too.
RECORD_VIOLATIONS = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) =>
  window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
"""
SCREENS = [
    "/#/label",
    "/#/cases",
    "/#/adjudicate",
    "/#/exports",
    "/#/admin/models",
    "/#/admin/training",
    "/#/admin/queue",
    "/#/admin/import",
    "/#/admin/trust",
]


@pytest.mark.django_db(transaction=True)
def test_every_screen_loads_under_the_csp_without_violations(
    live_server_url: str, new_page: Any, tmp_path: Path, shared_data: Path
) -> None:
    users()
    case = labelled_case(tmp_path, shared_data, {"NE": 2, "LY": 2})
    page = new_page(enforce_csp=True)
    page.add_init_script(RECORD_VIOLATIONS)
    response = page.goto("/accounts/login/?next=/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    sign_in(page, "boss")
    violations: list[str] = []
    for url in [*SCREENS, f"/#/cases/{case.pk}"]:
        page.goto(url)
        page.wait_for_load_state("networkidle")
        violations += [f"{url}: {v}" for v in page.evaluate("window.__csp")]
    page.goto(f"/#/cases/{case.pk}")
    page.get_by_test_id("gallery").locator(".thumb img").first.wait_for()
    page.wait_for_load_state("networkidle")
    violations += page.evaluate("window.__csp")
    csp_console = [e for e in page.console_errors if "Content Security Policy" in e]
    assert not violations and not csp_console, (violations, csp_console)
