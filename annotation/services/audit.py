from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.db.models import Model

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


def fields_state(obj: Model, names: Iterable[str]) -> dict[str, Any]:
    """The named fields of a row for an event's before or after: a foreign key as the
    related row's id, a datetime in ISO 8601."""
    state: dict[str, Any] = {}
    for name in names:
        field = obj._meta.get_field(name)
        value = getattr(obj, getattr(field, "attname", name))
        state[name] = value.isoformat() if isinstance(value, datetime) else value
    return state


def audit_login_failed(
    sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any
) -> None:
    username = str(credentials.get("username", ""))[:150]
    address = request.META.get("REMOTE_ADDR", "") if request is not None else ""
    audit_event_create(
        actor=None,
        action="login.failed",
        target_type="user",
        target_id=username[:64],  # the column's length; "after" has the whole name
        after={"username": username, "remote_addr": address},
    )


def audit_events_export(
    *, since: datetime | None, until: datetime | None
) -> Iterator[dict[str, Any]]:
    """Every audit event in [since, until), oldest first, as plain dicts (streamed)."""
    events = AuditEvent.objects.select_related("actor").order_by("id")
    if since is not None:
        events = events.filter(created_at__gte=since)
    if until is not None:
        events = events.filter(created_at__lt=until)
    for event in events.iterator(chunk_size=2000):
        yield {
            "id": event.pk,
            "created_at": event.created_at.isoformat(),
            "actor": event.actor.get_username() if event.actor else None,
            "action": event.action,
            "target_type": event.target_type,
            "target_id": event.target_id,
            "before": event.before,
            "after": event.after,
        }
