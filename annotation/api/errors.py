"""The API's exception handler: every error it returns in the one shape of
annotation/errors.py (``error_body``)::

    {"error": {"code": "invalid", "message": "...", "fields": {"code": "..."}}}

``code`` is stable and machine-readable, ``message`` is a sentence a person can act on
(what was wrong and what is allowed), ``fields`` maps each offending input field to what
is wrong with it (empty when the problem is not about one field). What an outage is, and
the messages for it, live in annotation/errors.py too, shared with wbcportal/middleware.py.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from annotation.errors import (
    DATABASE_UNAVAILABLE_MESSAGE,
    QUEUE_UNAVAILABLE_MESSAGE,
    RETRY_AFTER_SECONDS,
    ApplicationError,
    database_connections_reset,
    error_body,
    is_broker_unavailable,
    is_database_unavailable,
)

logger = logging.getLogger(__name__)


def _flatten(detail: Any, prefix: str = "") -> dict[str, str]:
    """DRF's nested error details as {"field" or "field.sub" or "items.0": "message"}."""
    out: dict[str, str] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if key == "non_field_errors":
                name = prefix or "non_field_errors"
            out.update(_flatten(value, name))
    elif isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            out[prefix or "non_field_errors"] = " ".join(str(item) for item in detail)
        else:
            for index, item in enumerate(detail):
                out.update(_flatten(item, f"{prefix}.{index}" if prefix else str(index)))
    else:
        out[prefix or "non_field_errors"] = str(detail)
    return out


def _validation_message(fields: dict[str, str]) -> str:
    parts = [f"{name}: {text}" for name, text in fields.items()]
    return "The request was not valid. " + "; ".join(parts)


def _service_unavailable(exc: Exception, context: dict[str, Any]) -> Response | None:
    """A lost database or Redis connection: 503 with what to do, never a bare 500."""
    if is_database_unavailable(exc):
        logger.error("database unavailable in %s: %s", context.get("view"), exc)
        database_connections_reset()
        code, message = "database_unavailable", DATABASE_UNAVAILABLE_MESSAGE
    elif is_broker_unavailable(exc):
        logger.error("Redis unavailable in %s: %s", context.get("view"), exc)
        code, message = "queue_unavailable", QUEUE_UNAVAILABLE_MESSAGE
    else:
        return None
    return Response(
        error_body(code, message),
        status=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _retry_after(exc: ApplicationError) -> str | None:
    """When to try again: what the service said, and for any 503 the outage default."""
    retry = exc.fields.get("retry_after")
    if retry:
        return retry
    if exc.status == status.HTTP_503_SERVICE_UNAVAILABLE:
        return str(RETRY_AFTER_SECONDS)
    return None


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApplicationError):
        retry = _retry_after(exc)
        return Response(
            error_body(exc.code, exc.message, exc.fields),
            status=exc.status,
            headers={"Retry-After": retry} if retry else None,
        )
    unavailable = _service_unavailable(exc, context)
    if unavailable is not None:
        return unavailable
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(
            exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        )
    if isinstance(exc, RequestDataTooBig):
        from annotation.api.parsers import body_limit, too_large_error

        exc = too_large_error(body_limit())
    if isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
        exc = exceptions.ParseError(
            f"{exc} Send fewer per request (WBC_UPLOAD_MAX_FILES files at most).",
            code="too_many_parts",
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "Not found.")
    if isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()

    response = drf_exception_handler(exc, context)
    if response is None:
        # A bug, not a user error: log the traceback, answer in the same shape.
        logger.error("unhandled error in %s", context.get("view"), exc_info=exc)
        return Response(
            error_body(
                "server_error",
                "The server failed to handle this request; the error was logged. "
                "Try again, and tell an admin if it persists.",
            ),
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        response.data = error_body("invalid", _validation_message(fields), fields)
        return response
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        message = str(exc.detail)
        if isinstance(exc, exceptions.NotAuthenticated):
            message = (
                "Sign in first: send `Authorization: Token <key>` (ask an admin for a key, "
                "`manage.py issue_token USER`) or use a browser session."
            )
        response.data = error_body(exc.default_code, message)
        return response
    if isinstance(exc, exceptions.PermissionDenied):
        view = context.get("view")
        rule = None
        if view is not None:
            from annotation.api.permissions import declared_rule

            rule = declared_rule(type(view))
        request = context.get("request")
        message = str(exc.detail)
        if message.startswith("CSRF Failed"):
            response.data = error_body(
                "csrf_failed",
                f"{message} Browser sessions must send the csrftoken cookie's value in the "
                "X-CSRFToken header; scripts should use `Authorization: Token <key>`.",
            )
            return response
        if (
            rule is not None
            and request is not None
            and message == str(exceptions.PermissionDenied.default_detail)
        ):
            roles = sorted(rule.allowed(request.method or ""))
            message = (
                f"Your role may not {request.method} this endpoint; it is open to: "
                f"{', '.join(roles) or 'nobody'}."
            )
        response.data = error_body("permission_denied", message)
        return response
    if isinstance(exc, exceptions.MethodNotAllowed):
        allowed = response.get("Allow", "")
        response.data = error_body(
            "method_not_allowed", f"{exc.detail} Allowed: {allowed or 'none'}."
        )
        return response
    if isinstance(exc, exceptions.Throttled):
        seconds = getattr(exc, "wait", None)
        wait = f" Retry in {int(seconds) + 1} s." if seconds is not None else ""
        response.data = error_body("throttled", f"Too many requests.{wait}")
        return response
    if isinstance(exc, exceptions.APIException):
        code = exc.get_codes() if isinstance(exc.get_codes(), str) else exc.default_code
        response.data = error_body(str(code), str(exc.detail))
    return response


# CSRF-exempt: it changes nothing, and a POST with a token to a misspelt URL must get this
# 404, not the CSRF middleware's HTML 403 page (token clients send no CSRF cookie).
@csrf_exempt
def json_not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    """404 for URLs under /api/ that match no route, in the API's error shape, for every
    method and every client (token, session or anonymous)."""
    return JsonResponse(
        error_body("not_found", f"No API endpoint at {request.path}; see /api/docs/."),
        status=status.HTTP_404_NOT_FOUND,
    )
