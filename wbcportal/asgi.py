"""ASGI entry point: Django over HTTP, Channels over websockets."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wbcportal.settings")
# Under ASGI each request runs in a new thread, so Django's per-thread connections can
# be neither persistent nor reused: without a pool every request would open (and
# PostgreSQL fork) a new connection. The web server therefore uses psycopg's pool
# unless WBC_DB_POOL says otherwise (Celery workers, which do not import this, keep
# plain connections: a pool must not be inherited across their forks).
os.environ.setdefault("WBC_DB_POOL", "true")
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
