"""A lost database connection is a 503 that says what to do, for every page.

API views get this from the API's exception handler (annotation/api/errors.py); this
middleware covers the HTML pages, the admin site, /media/ and the API's non-DRF routes, and
``server_error`` (the 500 handler) covers errors raised outside a view, e.g. by another
middleware. Either way the broken connection is closed, so the next request in the same
worker thread opens a fresh one instead of failing on the dead one. What counts as an
outage, and the message, are annotation/errors.py's, shared with the API.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import server_error as django_server_error

from annotation.errors import (
    DATABASE_UNAVAILABLE_MESSAGE,
    RETRY_AFTER_SECONDS,
    database_connections_reset,
    error_body,
    is_database_unavailable,
)

logger = logging.getLogger(__name__)

_HTML = (
    "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
    "<title>Database unavailable · WBC portal</title></head><body><main>"
    "<h1>Database unavailable</h1><p>{message}</p></main></body></html>"
)


def database_unavailable_response(request: HttpRequest) -> HttpResponse:
    """The 503: JSON in the API's error shape under /api/, a short page elsewhere; both
    say when to retry."""
    response: HttpResponse
    if request.path.startswith("/api/"):
        response = JsonResponse(
            error_body("database_unavailable", DATABASE_UNAVAILABLE_MESSAGE), status=503
        )
    else:
        response = HttpResponse(_HTML.format(message=DATABASE_UNAVAILABLE_MESSAGE), status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


class DatabaseUnavailableMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_database_unavailable(exception):
            return None
        logger.error(
            "database unavailable during %s %s: %s", request.method, request.path, exception
        )
        database_connections_reset()
        return database_unavailable_response(request)


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: a database outage raised outside a view is still a 503."""
    exc = sys.exc_info()[1]
    if is_database_unavailable(exc):
        database_connections_reset()
        return database_unavailable_response(request)
    return django_server_error(request)


class ContentSecurityPolicyMiddleware:
    """Sends ``Content-Security-Policy`` (``settings.WBC_CSP``) with every response.

    Django 5.2 has no built-in CSP (6.0 does). The portal's pages load only their own
    script and stylesheet (no inline script: the boot data is a ``json_script`` data
    block, which CSP does not run), images from the app and ``data:``/``blob:`` URLs, and
    talk to the app over fetch and its websocket; so an injected ``<script>`` or a
    foreign image beacon is refused by the browser even if markup ever slipped through.
    tests/security/test_csp.py opens the pages in Chromium and asserts no violation.

    The paths in ``settings.WBC_CSP_EXEMPT`` keep no policy: the API's Swagger page loads
    its viewer from a CDN with inline code, and the Django admin's own pages are
    Django's to secure (both are for signed-in staff only).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        policy = settings.WBC_CSP
        if policy and not request.path.startswith(tuple(settings.WBC_CSP_EXEMPT)):
            response.headers.setdefault("Content-Security-Policy", policy)
        return response
