from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from rest_framework.authtoken.models import Token

from annotation.services.tokens import token_revoke


class Command(BaseCommand):
    help = (
        "Print the API token of USER (created if missing) for `Authorization: Token <key>`. "
        "--revoke deletes it; --rotate replaces it with a new one."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--revoke", action="store_true", help="delete the user's token")
        group.add_argument("--rotate", action="store_true", help="replace the token")

    def handle(self, *args: Any, **options: Any) -> None:
        username = options["username"]
        try:
            user = get_user_model().objects.get(username=username)
        except get_user_model().DoesNotExist:
            raise CommandError(
                f"No user {username!r}; create one first (admin site or POST /api/users/)."
            ) from None
        if options["revoke"]:
            deleted = token_revoke(user_id=user.pk, actor=None)  # audited as token.revoke
            self.stdout.write(
                f"revoked the token of {username}" if deleted else f"{username} had no token"
            )
            return
        if options["rotate"]:
            token_revoke(user_id=user.pk, actor=None)
        if not user.is_active:
            raise CommandError(f"{username} is inactive; a token would not work.")
        token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(token.key)
