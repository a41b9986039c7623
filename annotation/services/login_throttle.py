"""Password guessing is slowed per account and client address, by django-axes.

After ``WBC_LOGIN_MAX_FAILURES`` failed sign-ins for one username from one address, each
within ``WBC_LOGIN_WINDOW_SECONDS`` of the one before, that pair is locked out for the
window: the HTML sign-in form, the admin site's form and ``POST /api/auth/token/`` all
refuse it (the forms with an error, all with 429), saying when to retry. Each lockout is
an audit event (``login.locked``); a successful sign-in clears the pair's count.

django-axes does the counting and the refusing (settings ``AXES_*``): its authentication
backend comes first in ``AUTHENTICATION_BACKENDS`` and refuses a locked-out pair before
any password is checked, and its database handler keeps one ``axes_accessattempt`` row per
username, address and user agent, in PostgreSQL or the embedded SQLite alike, so every web
process sees the same count and a Redis outage changes nothing. This module holds what
axes reads from the settings (the limit, the cool-off, the username) and what the portal
adds: the message saying when to retry, the audit event, and the reset after a token
sign-in (no Django ``login()``, so axes' own reset on ``user_logged_in`` does not run).
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_client_ip_address
from axes.models import AccessAttempt
from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from annotation.errors import ApplicationError
from annotation.services.audit import audit_event_create

logger = logging.getLogger(__name__)

# Django's own limit; axes' column holds 255, and the token endpoint does not limit what
# it is sent.
USERNAME_MAX_LENGTH = 150


def login_failure_limit(request: Any, credentials: dict[str, Any] | None) -> int:
    """``AXES_FAILURE_LIMIT``: read on each attempt, so a changed setting applies at once."""
    return int(settings.WBC_LOGIN_MAX_FAILURES)


def login_cooloff(request: Any) -> timedelta:
    """``AXES_COOLOFF_TIME``: how long failures count and a lockout lasts."""
    return timedelta(seconds=int(settings.WBC_LOGIN_WINDOW_SECONDS))


def login_username(request: Any, credentials: dict[str, Any] | None) -> str | None:
    """``AXES_USERNAME_CALLABLE``: the username as typed, cut to Django's length."""
    source = credentials or getattr(request, "data", None) or getattr(request, "POST", None)
    value = source.get("username") if isinstance(source, dict) else None  # QueryDict too
    return str(value)[:USERNAME_MAX_LENGTH] if value else None


def _retry_message(until: float) -> str:
    seconds = max(1, int(until - time.time()) + 1)
    minutes = (seconds + 59) // 60
    when = time.strftime("%H:%M UTC", time.gmtime(until))
    return (
        f"Too many failed sign-ins for this account from your address. Try again in "
        f"{minutes} min (after {when}), or ask an admin to reset the password."
    )


def login_lockout_error(request: Any) -> ApplicationError:
    """The 429 for a request axes flagged as locked out (``request.axes_locked_out``),
    saying when the lock ends: a window after the last failure it counted."""
    username = login_username(request, getattr(request, "axes_credentials", None))
    address = getattr(request, "axes_ip_address", None)
    last = AccessAttempt.objects.filter(username=username, ip_address=address).aggregate(
        last=Max("attempt_time")
    )["last"]
    until = ((last or timezone.now()) + login_cooloff(request)).timestamp()
    return ApplicationError(
        _retry_message(until),
        code="login_locked",
        status=429,
        fields={"retry_after": str(max(1, int(until - time.time()) + 1))},
    )


def login_locked_audit(
    sender: Any, *, request: Any, username: str | None, ip_address: str | None, **kwargs: Any
) -> None:
    """Receiver of axes' ``user_locked_out``: one ``login.locked`` event per lockout.

    Axes sends the signal again for every attempt refused while the lock lasts; those
    counted no failure (``axes_failures_since_start`` stays unset) and are already in the
    trail as ``login.failed``, so they are not recorded twice.
    """
    failures = getattr(request, "axes_failures_since_start", None)
    if failures is None:
        return
    window = int(login_cooloff(request).total_seconds())
    name = (username or "")[:USERNAME_MAX_LENGTH]
    with transaction.atomic():
        audit_event_create(
            actor=None,
            action="login.locked",
            target_type="user",
            target_id=name[:64],  # the column's length; "after" has the whole name
            after={
                "username": name,
                "remote_addr": ip_address or "",
                "failures": failures,
                "locked_seconds": window,
            },
        )
    logger.warning("sign-in locked for %ds after %d failures", window, failures)


def login_success_reset(*, request: Any, username: str) -> None:
    """Clear the failures of ``username`` from this request's address after a sign-in that
    is not a Django ``login()`` (the token endpoint); the forms' sign-ins are reset by axes
    itself (``AXES_RESET_ON_SUCCESS``)."""
    AxesProxyHandler.reset_attempts(
        ip_address=get_client_ip_address(request),
        username=username[:USERNAME_MAX_LENGTH],
    )
