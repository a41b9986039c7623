"""Rate limits for scripts: only requests authenticated with a token are throttled.

Browser sessions are people clicking; a runaway script is what a limit protects against.
The rate is ``WBC_API_TOKEN_RATE`` (settings_api.py), counted per user in the cache.

The count is a sliding-window estimate from two fixed-window counters (this window's and
the last one's, the last weighted by how much of it still overlaps the sliding window):
one ``INCR`` and one ``GET`` in a single round trip to Redis, whatever the rate. DRF's
``SimpleRateThrottle`` keeps the timestamp of every request in the window instead, and
reads and rewrites that whole list on each request: 6,000 floats pickled twice per request
at the default rate of 6000/min. So the counting stays ours; DRF's class still parses
the rate, and DRF answers the 429.

Django's cache API offers no pipeline (its ``incr`` alone is two round trips) and no public
way to its Redis client, so the counters use the cache's own client through its private
``_cache`` (see ``window_counts`` for why not a client of our own), with the cache's key
names: ``cache.clear()`` and ``cache.decr`` see the same keys.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache
from rest_framework.authtoken.models import Token
from rest_framework.throttling import SimpleRateThrottle

from annotation.errors import broker_errors

if TYPE_CHECKING:  # importing DRF views here would be circular (DRF settings load us)
    from rest_framework.request import Request
    from rest_framework.views import APIView


def window_counts(key: str, window: int, duration: int) -> tuple[int, int]:
    """Count one request in window ``window`` of ``key``; returns (this window's count
    including it, the previous window's count)."""
    current, previous = f"{key}:{window}", f"{key}:{window - 1}"
    backend = caches["default"]  # ``cache`` is a proxy: isinstance needs the backend
    if isinstance(backend, RedisCache):
        full = backend.make_and_validate_key(current)
        # The cache's own client, through its private ``_cache``: a process-wide redis-py
        # client of our own (public API) gave 'Bad file descriptor' errors, answered as
        # 500s, on 6 of ~4,000 queue requests under bench_api's 20 clients (2026-12-06);
        # Django's client gave none in the same run. Keep this until that is understood.
        client = backend._cache.get_client(full, write=True)  # type: ignore[attr-defined]
        pipe = client.pipeline(transaction=False)
        pipe.incr(full)
        pipe.expire(full, 2 * duration)
        pipe.get(backend.make_and_validate_key(previous))
        count, _, before = pipe.execute()
        return int(count), int(before or 0)
    cache.add(current, 0, 2 * duration)  # other caches (the embedded default): not atomic
    return cache.incr(current), int(cache.get(previous) or 0)


def window_uncount(key: str, window: int) -> None:
    """Take back a request counted by ``window_counts`` (it was refused)."""
    cache.decr(f"{key}:{window}")


class TokenClientThrottle(SimpleRateThrottle):
    scope = "token"
    # Set by SimpleRateThrottle.__init__ from the rate (the stubs do not declare them).
    num_requests: int
    duration: int
    _wait: float = 0.0

    def allow_request(self, request: Request, view: APIView) -> bool:
        if self.rate is None:
            return True
        key = self.get_cache_key(request, view)
        if key is None:
            return True
        now = self.timer()
        window = int(now // self.duration)
        # The counters live in Redis; while it is down, scripts keep working unthrottled
        # rather than every token request failing (tests/faults/test_redis.py).
        try:
            count, before = window_counts(key, window, self.duration)
        except broker_errors():
            return True
        elapsed = (now - window * self.duration) / self.duration  # of this window, gone
        estimate = before * (1 - elapsed) + count
        if estimate <= self.num_requests:
            return True
        # Refused requests do not count, so a client that waits as told gets through.
        with contextlib.suppress(*broker_errors()):
            window_uncount(key, window)
        # The wait: the previous window's weight falls linearly until the estimate is
        # under the limit again; if that takes longer than this window, its end.
        over = estimate - self.num_requests
        if before and over <= before * (1 - elapsed):
            self._wait = over / before * self.duration
        else:
            self._wait = (1 - elapsed) * self.duration
        return False

    def wait(self) -> float | None:
        return self._wait  # DRF's Throttled rounds it up

    def get_cache_key(self, request: Request, view: APIView) -> str | None:
        if not isinstance(request.auth, Token):
            return None  # sessions and anonymous requests are not throttled here
        return self.cache_format % {"scope": self.scope, "ident": request.user.pk}
