"""Rate limits for scripts: only requests authenticated with a token are throttled.

Browser sessions are people clicking; a runaway script is what a limit protects against.
The rate is ``WBC_API_TOKEN_RATE`` (settings_api.py), counted per user in the cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rest_framework.authtoken.models import Token
from rest_framework.throttling import SimpleRateThrottle

if TYPE_CHECKING:  # importing DRF views here would be circular (DRF settings load us)
    from rest_framework.request import Request
    from rest_framework.views import APIView


class TokenClientThrottle(SimpleRateThrottle):
    scope = "token"

    def allow_request(self, request: Request, view: APIView) -> bool:
        # The counters live in Redis; while it is down, scripts keep working unthrottled
        # rather than every token request failing (tests/faults/test_redis.py).
        import redis

        try:
            return super().allow_request(request, view)
        except (redis.ConnectionError, redis.TimeoutError):
            return True

    def get_cache_key(self, request: Request, view: APIView) -> str | None:
        if not isinstance(request.auth, Token):
            return None  # sessions and anonymous requests are not throttled here
        return self.cache_format % {"scope": self.scope, "ident": request.user.pk}
