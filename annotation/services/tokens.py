"""API tokens: revocation by their owner or by an admin, always audited."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction
from rest_framework.authtoken.models import Token

from annotation.errors import ApplicationError
from annotation.services.audit import audit_event_create
from annotation.types import UserLike


def token_revoke(*, user_id: int, actor: UserLike | None) -> bool:
    """Delete the user's API token (requests with it then get 401); True when there was
    one. Audited either way, so an admin's "revoke just in case" is on record too."""
    user = get_user_model().objects.filter(pk=user_id).first()
    if user is None:
        raise ApplicationError(
            f"No user with id {user_id}; see GET /api/users/ for the ids.",
            code="not_found",
            status=404,
        )
    # The deletion and its audit record commit together.
    with transaction.atomic():
        deleted, _ = Token.objects.filter(user=user).delete()
        audit_event_create(
            actor=actor,
            action="token.revoke",
            target_type="user",
            target_id=user.pk,
            after={"username": user.get_username(), "had_token": bool(deleted)},
        )
    return bool(deleted)
