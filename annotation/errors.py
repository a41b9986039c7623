"""The one home of what goes wrong: the application error, its JSON shape, and outages.

Every error the portal answers with has the same body (:func:`error_body`)::

    {"error": {"code": "invalid", "message": "...", "fields": {"code": "..."}}}

Services raise :class:`ApplicationError`; the API's exception handler
(annotation/api/errors.py) and the middleware for the other pages
(wbcportal/middleware.py) turn errors into responses. A lost database or Redis connection
is recognised here, once (:func:`is_database_unavailable`, :func:`is_broker_unavailable`),
so the API, the pages, the health check and the services that degrade gracefully all
agree on what an outage is, and every 503 says when to retry (:data:`RETRY_AFTER_SECONDS`).
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

from django.core.exceptions import ObjectDoesNotExist
from django.db import DatabaseError, InterfaceError, OperationalError, connections, models

_M = TypeVar("_M", bound=models.Model)

# Seconds a client is told to wait after a 503: long enough for a restarted PostgreSQL
# or Redis to come back, short enough that a person retrying by hand is not kept waiting.
RETRY_AFTER_SECONDS = 30

DATABASE_UNAVAILABLE_MESSAGE = (
    "The database is not reachable right now, so nothing was saved. "
    "Wait a moment and try again; if it persists, tell an admin (see /health/)."
)

QUEUE_UNAVAILABLE_MESSAGE = (
    "The task queue (Redis) is not reachable right now, so this could not be done. "
    "Wait a moment and try again; if it persists, tell an admin (see /health/)."
)


class ApplicationError(Exception):
    """An error a person can act on: a stable ``code``, a ``message`` saying what was
    wrong and what is allowed, the offending ``fields``, and the HTTP ``status``."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "invalid",
        fields: dict[str, str] | None = None,
        status: int = 400,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.fields = fields or {}
        self.status = status


def error_body(code: str, message: str, fields: dict[str, str] | None = None) -> dict[str, Any]:
    """The JSON body of every error response, API and middleware alike."""
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def get_or_404(queryset: type[_M] | models.QuerySet[_M], *, what: str, **lookup: object) -> _M:
    """The row the lookup names, or the API's 404: "<what> <value> does not exist.".

    Pass a queryset instead of a model to fetch with ``select_related``/``only``/
    ``select_for_update``. A value that is not even of the right type (``pk="x"``) is the
    same 404: for the caller that row does not exist either.
    """
    qs = queryset._default_manager.all() if isinstance(queryset, type) else queryset
    try:
        return qs.get(**lookup)
    except (ObjectDoesNotExist, ValueError, TypeError):
        shown = ", ".join(str(v) for v in lookup.values())
        raise ApplicationError(
            f"{what} {shown} does not exist.", code="not_found", status=404
        ) from None


# --- outages -----------------------------------------------------------------------------


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


@functools.cache
def broker_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean Redis refused or dropped the connection, directly (the
    cache, the throttles) or through kombu/Celery (enqueueing a task). A tuple, so that it
    also fits ``except broker_errors():`` and ``contextlib.suppress(*broker_errors())``.

    Imported on first use: redis and kombu are only needed once something talks to Redis.
    """
    import redis
    from kombu.exceptions import OperationalError as KombuOperationalError

    return (redis.ConnectionError, redis.TimeoutError, KombuOperationalError)


def is_broker_unavailable(exc: BaseException | None) -> bool:
    """Redis refused or dropped the connection (directly, or through kombu/Celery)."""
    return isinstance(exc, broker_errors())


def database_connections_reset() -> None:
    """Drop connections that failed, so the next request in the same worker thread opens a
    fresh one instead of failing on the dead one."""
    for conn in connections.all(initialized_only=True):
        try:
            if conn.connection is not None and not conn.is_usable():
                conn.close()
        except DatabaseError:
            conn.connection = None
