from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser

from annotation.models import AuditEvent
from annotation.types import UserLike


def audit_event_create(
    *,
    actor: UserLike | AnonymousUser | None,
    action: str,
    target_type: str,
    target_id: str | int,
    before: Any = None,
    after: Any = None,
) -> AuditEvent:
    """Append one event. Callers run it inside their own transaction, so an action and
    its audit record commit or roll back together."""
    return AuditEvent.objects.create(
        actor=actor if actor is not None and actor.is_authenticated else None,
        action=action,
        target_type=target_type,
        target_id=str(target_id),
        before=before,
        after=after,
    )
