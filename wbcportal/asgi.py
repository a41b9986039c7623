"""ASGI entry point: Django over HTTP, Channels over websockets."""

import os

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler
from django.http import HttpRequest, HttpResponseBase

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wbcportal.settings")
# Under ASGI each request runs in a new thread, so Django's per-thread connections can
# be neither persistent nor reused: without a pool every request would open (and
# PostgreSQL fork) a new connection. The web server therefore uses psycopg's pool
# unless WBC_DB_POOL says otherwise (Celery workers, which do not import this, keep
# plain connections: a pool must not be inherited across their forks).
os.environ.setdefault("WBC_DB_POOL", "true")
# Without a broker (the embedded default) the web server runs Celery tasks in a background
# thread rather than inside the request that sends them (wbcportal/embedded.py).
os.environ.setdefault("WBC_TASKS_IN_BACKGROUND", "true")


class OneHopASGIHandler(ASGIHandler):
    """Django's ASGI handler with the middleware chain run synchronously, in one hop to
    the request's thread.

    Every view and middleware here is synchronous. Django's stock handler runs the chain
    in async mode: it hops to a thread for the sync middleware, back to the event loop for
    its async core (``async_to_sync``), and to the thread again for the view, handing work
    between threads through locks on each hop. Here the whole request - middleware, view,
    response middleware - is one ``sync_to_async`` call, as under WSGI, in the thread
    Django's per-request ``ThreadSensitiveContext`` gives it. Measured side by side with
    benchmarks/bench_api.py (2 workers, 20 clients, twice each): server CPU per request
    6.0 -> 5.0 ms on GET /api/auth/me/, 14.7 -> 14.1 ms on the queue's next -> submit.
    Async views would still work (Django wraps them with ``async_to_sync``); there are
    none. Streaming responses are sent by ``ASGIHandler`` as before.
    """

    def __init__(self) -> None:
        BaseHandler.__init__(self)
        self.load_middleware(is_async=False)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)


def get_asgi_application() -> OneHopASGIHandler:
    import django

    django.setup(set_prefix=False)
    return OneHopASGIHandler()


django_asgi_app = get_asgi_application()

from django.urls import get_resolver  # noqa: E402

# Load the URLconf (and every view module) now rather than in the first request.
get_resolver().url_patterns  # noqa: B018

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from annotation.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
