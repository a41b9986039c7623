"""Django's Redis cache with one connection pool per process instead of one per request.

Django keeps a cache backend per thread (``caches`` is thread-local), and under ASGI every
request runs in a new thread, so the stock ``RedisCache`` built a new client, a new pool
and a new TCP connection to Redis for each request (about a tenth of a review-queue
request's CPU, measured with py-spy in benchmarks/bench_api.py). redis-py's pools are
thread-safe and reset themselves after a fork, so one shared client per location and
options is safe.
"""

from __future__ import annotations

import threading
from typing import Any

from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from django.utils.functional import cached_property

_clients: dict[str, RedisCacheClient] = {}
_lock = threading.Lock()


class SharedRedisCache(RedisCache):
    @cached_property
    def _cache(self) -> Any:
        # RedisCache's own attributes, which django-stubs does not declare.
        servers, options = self._servers, self._options  # type: ignore[attr-defined]
        key = repr((servers, sorted(options.items())))
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = self._class(servers, **options)  # type: ignore[attr-defined]
        return client
