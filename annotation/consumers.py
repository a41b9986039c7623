"""Live updates for the browser: queue counts, training progress (and, for admins, the
training log). Signed-in users only."""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from annotation.roles import ADMIN, user_roles
from annotation.services.events import JOB_LOGS_GROUP, JOBS_GROUP, QUEUE_GROUP


class EventsConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.groups_joined = [QUEUE_GROUP, JOBS_GROUP]
        if await self._is_admin(user):
            self.groups_joined.append(JOB_LOGS_GROUP)
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        await self.send_json({"event": "hello", "data": {"groups": self.groups_joined}})

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def portal_event(self, message: dict[str, Any]) -> None:
        await self.send_json({"event": message["event"], "data": message["data"]})

    @staticmethod
    async def _is_admin(user: Any) -> bool:
        from channels.db import database_sync_to_async

        @database_sync_to_async
        def check() -> bool:
            return ADMIN in user_roles(user)

        return await check()
