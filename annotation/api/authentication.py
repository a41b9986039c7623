"""Token authentication in two small SQL queries, with the caller's roles.

DRF's ``TokenAuthentication`` asks the ORM for the token with its user, and the role
check (permissions.py) then asks for the user's groups: two queries whose compilation by
the ORM cost more CPU than anything else in a short request (about 1.4 ms each on the
2-core machine, against well under 0.1 ms for PostgreSQL to run them; py-spy and
cProfile on benchmarks/bench_api.py). Every token request pays it, so both are written
in SQL here; the answers - the same ``(user, token)`` pair, the same errors - are DRF's.
"""

from __future__ import annotations

import functools
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import DEFAULT_DB_ALIAS, connection
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token

from annotation.roles import roles_from_groups


def _user_with_token(key: str) -> Any:
    """The token's user, with ``token_created`` from the token row, or None."""
    user_model = get_user_model()
    sql = (
        f"SELECT u.*, t.created AS token_created FROM {user_model._meta.db_table} u "
        f"JOIN {Token._meta.db_table} t ON t.user_id = u.id WHERE t.key = %s"
    )
    found = list(user_model.objects.raw(sql, [key]))
    return found[0] if found else None


def _group_names(user_id: int) -> list[str]:
    through = user_model_groups_table()
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT g.name FROM {Group._meta.db_table} g "
            f"JOIN {through} ug ON ug.group_id = g.id WHERE ug.user_id = %s",
            [user_id],
        )
        return [row[0] for row in cursor.fetchall()]


@functools.cache  # model metadata is fixed once Django is set up
def user_model_groups_table() -> str:
    field = get_user_model()._meta.get_field("groups")
    return str(field.remote_field.through._meta.db_table)  # type: ignore[union-attr]


class TokenAuthentication(authentication.TokenAuthentication):
    def authenticate_credentials(self, key: str) -> tuple[Any, Token]:
        user = _user_with_token(key)
        if user is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        # from_db: the token is a row read from the database (our query above), not a new
        # one; it is what the ORM itself builds rows with.
        token = Token.from_db(
            DEFAULT_DB_ALIAS, ["key", "user_id", "created"], [key, user.pk, user.token_created]
        )
        token.user = user
        user._wbc_roles = roles_from_groups(_group_names(user.pk), is_superuser=user.is_superuser)
        return user, token
