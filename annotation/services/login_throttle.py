"""Password guessing is slowed per account and client address.

After ``WBC_LOGIN_MAX_FAILURES`` failed sign-ins for one username from one address within
``WBC_LOGIN_WINDOW_SECONDS``, that pair is locked out for the same window: the HTML sign-in
form, the admin site's form and ``POST /api/auth/token/`` all refuse it (the form with an
error, the API with 429), saying when to retry. Each lockout is an audit event
(``login.locked``). Counters live in the Django cache (Redis in production, so every web
process shares them); a successful sign-in clears the pair's counter.

When the cache itself is down the check lets the attempt through (the password is still
required) and logs a warning: an outage of Redis must not lock every user out.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction

from annotation.errors import ApplicationError
from annotation.services.audit import audit_event_create

logger = logging.getLogger(__name__)


def _limits() -> tuple[int, int]:
    return int(settings.WBC_LOGIN_MAX_FAILURES), int(settings.WBC_LOGIN_WINDOW_SECONDS)


def _key(kind: str, *, username: str, address: str) -> str:
    # Hashed: usernames typed by strangers are not stored in the cache as they were typed.
    ident = hashlib.sha256(f"{username.casefold()}\0{address}".encode()).hexdigest()[:32]
    return f"login-throttle:{kind}:{ident}"


def client_address(request: Any) -> str:
    """The client's address as the ASGI server reports it (behind a proxy, run the server
    with its proxy-headers option so this is the client, not the proxy)."""
    meta = getattr(request, "META", None) or {}
    return str(meta.get("REMOTE_ADDR", "") or "unknown")


def _retry_message(until: float) -> str:
    seconds = max(1, int(until - time.time()) + 1)
    minutes = (seconds + 59) // 60
    when = time.strftime("%H:%M UTC", time.gmtime(until))
    return (
        f"Too many failed sign-ins for this account from your address. Try again in "
        f"{minutes} min (after {when}), or ask an admin to reset the password."
    )


def login_throttle_check(*, username: str, address: str) -> None:
    """Raise a 429 ApplicationError while ``username`` from ``address`` is locked out."""
    try:
        until = cache.get(_key("locked", username=username, address=address))
    except Exception:  # the cache (Redis) is down: let the password decide
        logger.warning("login throttle unavailable (cache down); not enforced", exc_info=True)
        return
    if until is not None and float(until) > time.time():
        seconds = int(float(until) - time.time()) + 1
        raise ApplicationError(
            _retry_message(float(until)),
            code="login_locked",
            status=429,
            fields={"retry_after": str(seconds)},
        )


def login_failure_record(*, username: str, address: str) -> bool:
    """Count one failed sign-in; returns True when this failure starts a lockout."""
    max_failures, window = _limits()
    failures_key = _key("failures", username=username, address=address)
    try:
        cache.add(failures_key, 0, timeout=window)  # the window starts at the first failure
        failures = cache.incr(failures_key)
    except ValueError:  # expired between add and incr
        cache.set(failures_key, 1, timeout=window)
        failures = 1
    except Exception:
        logger.warning("login throttle unavailable (cache down); failure not counted")
        return False
    if failures < max_failures:
        return False
    until = time.time() + window
    cache.set(_key("locked", username=username, address=address), until, timeout=window)
    cache.delete(failures_key)
    with transaction.atomic():
        audit_event_create(
            actor=None,
            action="login.locked",
            target_type="user",
            target_id=username[:150],
            after={
                "username": username[:150],
                "remote_addr": address,
                "failures": failures,
                "locked_seconds": window,
            },
        )
    logger.warning("sign-in locked for %ds after %d failures", window, failures)
    return True


def login_success_reset(*, username: str, address: str) -> None:
    try:
        cache.delete(_key("failures", username=username, address=address))
    except Exception:
        logger.warning("login throttle unavailable (cache down); counter not reset")
