"""Who may call what: the role rules, declared once per view.

Every API view names its rule in ``permission_classes``::

    permission_classes = [Roles(GET=EVERYONE, POST=ADMINS)]

A method not named is refused for every role, and a view that declares nothing falls back
to ``DenyUndeclared`` (settings_api.py), so a new endpoint is closed until someone says
who may use it. ``tests/annotation/api/test_permissions.py`` checks every URL x role x
method against its own table, so it fails for a new endpoint without an entry there too.

Roles are Django groups; who holds which is ``user_roles`` (annotation/roles.py,
re-exported here for the API modules); a superuser counts as an admin.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

from rest_framework.permissions import BasePermission

from annotation.roles import (
    ADMIN,
    DATA_SCIENTIST,
    HEMATOLOGIST,
    ROLES,
    SENIOR_HEMATOLOGIST,
    user_roles,
)

if TYPE_CHECKING:  # importing DRF views here would be circular (DRF settings load us)
    from rest_framework.request import Request
    from rest_framework.views import APIView

ANYONE = "anonymous"  # not a role: marks endpoints open to unauthenticated requests

EVERYONE: frozenset[str] = frozenset(ROLES)
ADMINS: frozenset[str] = frozenset({ADMIN})
LABELLERS: frozenset[str] = frozenset({HEMATOLOGIST, SENIOR_HEMATOLOGIST, ADMIN})
ADJUDICATORS: frozenset[str] = frozenset({SENIOR_HEMATOLOGIST, ADMIN})
EXPORTERS: frozenset[str] = frozenset({DATA_SCIENTIST, ADMIN})
PUBLIC: frozenset[str] = frozenset({ANYONE, *EVERYONE})


class RolePermission(BasePermission):
    """Allow a request when the user holds one of the roles named for its method.

    Made by ``Roles(...)``; HEAD follows GET and OPTIONS is allowed to whoever may use
    any method of the view.
    """

    rules: ClassVar[dict[str, frozenset[str]]] = {}

    @classmethod
    def allowed(cls, method: str) -> frozenset[str]:
        return cls.rules.get(method.upper(), frozenset())

    def has_permission(self, request: Request, view: APIView) -> bool:
        method = (request.method or "").upper()
        if method not in self.rules and not hasattr(view, method.lower()):
            return True  # the view has no such handler: let DRF answer 405
        allowed = self.allowed(method)
        if ANYONE in allowed:
            return True
        return bool(user_roles(request.user) & allowed)


def Roles(**rules: Iterable[str]) -> type[RolePermission]:
    """The permission class for a view: ``Roles(GET=EVERYONE, POST=ADMINS)``."""
    table = {method.upper(): frozenset(roles) for method, roles in rules.items()}
    if "GET" in table:
        table.setdefault("HEAD", table["GET"])
    table.setdefault("OPTIONS", frozenset().union(*table.values()))
    name = "Roles_" + "_".join(f"{m}" for m in sorted(table))
    return type(name, (RolePermission,), {"rules": table})


class DenyUndeclared(BasePermission):
    """The default: a view that names no rule is open to nobody."""

    message = "This endpoint declares no access rule yet; nobody may use it."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return False


def declared_rule(view_cls: type[APIView]) -> type[RolePermission] | None:
    for permission in getattr(view_cls, "permission_classes", []):
        if isinstance(permission, type) and issubclass(permission, RolePermission):
            return permission
    return None
