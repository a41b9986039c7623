"""A lost database connection is a 503 that says what to do, for every page.

API views get this from the API's exception handler (annotation/api/errors.py); this
middleware covers the HTML pages, the admin site, /media/ and the API's non-DRF routes, and
``server_error`` (the 500 handler) covers errors raised outside a view, e.g. by another
middleware. Either way the broken connection is closed, so the next request in the same
worker thread opens a fresh one instead of failing on the dead one.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from django.db import DatabaseError, InterfaceError, OperationalError, connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import server_error as django_server_error

logger = logging.getLogger(__name__)

DATABASE_UNAVAILABLE_MESSAGE = (
    "The database is not reachable right now, so nothing was saved. "
    "Wait a moment and try again; if it persists, tell an admin (see /health/)."
)

_HTML = (
    "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
    "<title>Database unavailable · WBC portal</title></head><body><main>"
    "<h1>Database unavailable</h1><p>{message}</p></main></body></html>"
)


def is_database_unavailable(exc: BaseException | None) -> bool:
    """Errors that mean the connection to the database failed, not a bad query."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    # psycopg raises these when the server ends the session mid-query (pg_terminate_backend,
    # a restart): Django wraps them as OperationalError, but not when they surface raw.
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def database_connections_reset() -> None:
    """Drop connections that failed, so the next request reconnects."""
    for conn in connections.all(initialized_only=True):
        try:
            if conn.connection is not None and not conn.is_usable():
                conn.close()
        except DatabaseError:
            conn.connection = None


def database_unavailable_response(request: HttpRequest) -> HttpResponse:
    from annotation.api.errors import error_body

    if request.path.startswith("/api/"):
        return JsonResponse(
            error_body("database_unavailable", DATABASE_UNAVAILABLE_MESSAGE), status=503
        )
    response = HttpResponse(_HTML.format(message=DATABASE_UNAVAILABLE_MESSAGE), status=503)
    response["Retry-After"] = "30"
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
