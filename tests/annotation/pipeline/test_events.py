"""Live updates over Channels: authenticated only, admins alone get training logs."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model

from annotation.services.events import JOB_LOGS_GROUP, JOBS_GROUP, QUEUE_GROUP, broadcast
from annotation.services.users import user_create_with_role
from wbcportal.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


async def _connect(user):
    comm = WebsocketCommunicator(
        _UserInjector(user), "/ws/events/", headers=[(b"origin", b"http://127.0.0.1")]
    )
    connected, code = await comm.connect()
    return comm, connected, code


class _UserInjector:
    """Puts a user in the scope the way the session middleware would."""

    def __init__(self, user) -> None:
        from channels.routing import URLRouter

        from annotation.routing import websocket_urlpatterns

        self.user = user
        self.inner = URLRouter(websocket_urlpatterns)

    async def __call__(self, scope, receive, send):
        from django.contrib.auth.models import AnonymousUser

        return await self.inner({**scope, "user": self.user or AnonymousUser()}, receive, send)


def test_anonymous_connection_is_refused() -> None:
    async def run():
        comm = WebsocketCommunicator(
            application, "/ws/events/", headers=[(b"origin", b"http://127.0.0.1")]
        )
        connected, _ = await comm.connect()
        assert not connected

    async_to_sync(run)()


def test_hematologist_gets_queue_and_job_events_but_not_logs() -> None:
    user = user_create_with_role(username="h", password="Long-pass-123", role="hematologist")

    async def run():
        comm, connected, _ = await _connect(user)
        assert connected
        hello = await comm.receive_json_from()
        assert set(hello["data"]["groups"]) == {QUEUE_GROUP, JOBS_GROUP}
        await sync_to_async(broadcast)(QUEUE_GROUP, "queue.counts", {"queued": 3})
        assert await comm.receive_json_from(timeout=5) == {
            "event": "queue.counts",
            "data": {"queued": 3},
        }
        await sync_to_async(broadcast)(JOB_LOGS_GROUP, "training.log", {"log_tail": "secret"})
        assert await comm.receive_nothing(timeout=0.5)
        await comm.disconnect()

    async_to_sync(run)()


def test_admin_gets_training_logs() -> None:
    admin = user_create_with_role(username="a", password="Long-pass-123", role="admin")

    async def run():
        comm, connected, _ = await _connect(admin)
        assert connected
        await comm.receive_json_from()
        await sync_to_async(broadcast)(JOB_LOGS_GROUP, "training.log", {"log_tail": "epoch 1"})
        message = await comm.receive_json_from(timeout=5)
        assert message["event"] == "training.log"
        await comm.disconnect()

    async_to_sync(run)()
    assert get_user_model().objects.count() == 1


def test_an_idle_connection_still_receives_events_after_the_redis_read_timeout() -> None:
    import asyncio

    from django.conf import settings

    if "Redis" not in settings.CHANNEL_LAYERS["default"]["BACKEND"]:
        pytest.skip("only the Redis channel layer has the idle read timeout")
    user = user_create_with_role(username="idle", password="Long-pass-123", role="hematologist")

    async def run():
        comm, connected, _ = await _connect(user)
        assert connected
        await comm.receive_json_from()
        await asyncio.sleep(6.5)  # longer than redis-py's default 5 s socket timeout
        await sync_to_async(broadcast)(QUEUE_GROUP, "queue.counts", {"queued": 1})
        assert (await comm.receive_json_from(timeout=5))["data"] == {"queued": 1}
        await comm.disconnect()

    async_to_sync(run)()
