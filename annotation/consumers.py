"""Live updates for the browser: queue counts, training progress (and, for admins, the
training log). Signed-in users only.

Every group is shared by all its members, so an event cannot be cut per person the way a
cell endpoint is (annotation/selectors/visibility.py): what services broadcast are counts
and job states, nothing of a cell. Should an event ever carry a cell's label, reads,
source class names or file name, a reader's connection drops it (and the server logs it)
rather than give a gold or independent-read answer away.
"""

from __future__ import annotations

import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from annotation.roles import ADMIN, user_roles
from annotation.selectors.visibility import payload_carries_cell_answers, user_is_blinded
from annotation.services.events import JOB_LOGS_GROUP, JOBS_GROUP, QUEUE_GROUP

logger = logging.getLogger(__name__)


class EventsConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        is_admin, self.blinded = await self._roles(user)
        self.groups_joined = [QUEUE_GROUP, JOBS_GROUP]
        if is_admin:
            self.groups_joined.append(JOB_LOGS_GROUP)
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        await self.send_json({"event": "hello", "data": {"groups": self.groups_joined}})

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def portal_event(self, message: dict[str, Any]) -> None:
        if self.blinded and payload_carries_cell_answers(message["data"]):
            logger.warning("event %s carries cell answers; not sent to a reader", message["event"])
            return
        await self.send_json({"event": message["event"], "data": message["data"]})

    @staticmethod
    async def _roles(user: Any) -> tuple[bool, bool]:
        """(admin, blinded reader), read once per connection."""

        @database_sync_to_async
        def read() -> tuple[bool, bool]:
            return ADMIN in user_roles(user), user_is_blinded(user=user)

        return await read()  # type: ignore[no-any-return]
