"""Roles are Django groups with permissions: this module makes the groups and gives them
their permissions. The role names, and who holds which role, are annotation/roles.py's."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, Permission
from django.db import transaction

from annotation.roles import ADMIN, DATA_SCIENTIST, HEMATOLOGIST, ROLES, SENIOR_HEMATOLOGIST

__all__ = [
    "ADMIN",
    "DATA_SCIENTIST",
    "HEMATOLOGIST",
    "ROLES",
    "ROLE_PERMISSIONS",
    "SENIOR_HEMATOLOGIST",
    "roles_ensure",
    "roles_ensure_on_migrate",
]

_READ = [
    "annotation.view_case",
    "annotation.view_cellimage",
    "annotation.view_label",
    "annotation.view_prediction",
    "annotation.view_segmentation",
    "annotation.view_modelversion",
]

_LABELLING = [
    "annotation.add_label",
    "annotation.label_cell",
    "annotation.signoff_case",
    "annotation.work_queue",
]

ROLE_PERMISSIONS: dict[str, list[str]] = {
    HEMATOLOGIST: [*_READ, *_LABELLING],
    SENIOR_HEMATOLOGIST: [*_READ, *_LABELLING, "annotation.adjudicate"],
    DATA_SCIENTIST: [
        *_READ,
        "annotation.export_cells",
        "annotation.view_importbatch",
        "annotation.view_trainingjob",
    ],
    # Admins get every permission of this app plus user management (see roles_ensure).
    ADMIN: [],
}


def _permission(dotted: str) -> Permission:
    app_label, codename = dotted.split(".", 1)
    return Permission.objects.get(content_type__app_label=app_label, codename=codename)


@transaction.atomic
def roles_ensure() -> dict[str, Group]:
    """Create or update the role groups so they hold exactly their permissions."""
    groups: dict[str, Group] = {}
    for role in ROLES:
        group, _ = Group.objects.get_or_create(name=role)
        if role == ADMIN:
            perms = list(
                Permission.objects.filter(
                    content_type__app_label__in=["annotation", "auth", "authtoken"]
                )
            )
        else:
            perms = [_permission(p) for p in ROLE_PERMISSIONS[role]]
        group.permissions.set(perms)
        groups[role] = group
    return groups


def roles_ensure_on_migrate(sender: Any, **kwargs: Any) -> None:
    roles_ensure()
