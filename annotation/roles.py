"""The roles, and who holds which: the one place that turns a user's groups into roles.

A role is a Django group of the same name (its permissions are set by
annotation/services/roles.py); a superuser counts as an admin. The API's permission rules,
token sign-in, the UI boot data, the websocket consumer and the export selector all ask
:func:`user_roles`, so they can never disagree about what someone may do. No Django import
here: the role names are needed where Django is not set up yet (DRF settings load the
permission classes).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

HEMATOLOGIST = "hematologist"
# A hematologist who also settles disagreements between independent reads.
SENIOR_HEMATOLOGIST = "senior_hematologist"
ADMIN = "admin"
DATA_SCIENTIST = "data_scientist"
ROLES = (HEMATOLOGIST, SENIOR_HEMATOLOGIST, ADMIN, DATA_SCIENTIST)


def roles_from_groups(group_names: Iterable[str], *, is_superuser: bool) -> frozenset[str]:
    """The roles among a user's group names; a superuser counts as an admin. Other groups
    (made by hand in the admin site) are not roles and are ignored."""
    names = set(group_names)
    if is_superuser:
        names.add(ADMIN)
    return frozenset(names & set(ROLES))


def user_roles(user: Any) -> frozenset[str]:
    """The roles of a user, read once per request: cached on the user object, which token
    authentication fills in from its own query (annotation/api/authentication.py)."""
    if user is None or not user.is_authenticated:
        return frozenset()
    cached = getattr(user, "_wbc_roles", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    roles = roles_from_groups(
        user.groups.values_list("name", flat=True), is_superuser=user.is_superuser
    )
    user._wbc_roles = roles
    return roles
