from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    UserLike: TypeAlias = User
else:
    UserLike = object
