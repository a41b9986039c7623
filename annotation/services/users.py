"""Users and their role: create one, change a role, and keep at least one admin.

Creating and re-roling are separate operations on purpose. A create that silently
re-roled an existing account (and dropped the password it was sent) let a typo in a
username demote a colleague, or an admin demote themselves; so :func:`user_create` refuses
an existing username (409) and a role changes only through :func:`user_role_update`
(``PATCH /api/users/{id}/``). ``manage.py create_user`` and the demo loader, the
operator's tools that run with shell access, keep the create-or-re-role of
:func:`user_create_with_role`; all three go through the last-admin guard.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser, Group
from django.contrib.auth.password_validation import (
    password_validators_help_texts,
    validate_password,
)
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q

from annotation.errors import ApplicationError, get_or_404
from annotation.services.audit import audit_event_create
from annotation.services.roles import ADMIN, ROLES, roles_ensure
from annotation.types import UserLike


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ApplicationError(
            f"Unknown role {role!r}; use one of {', '.join(ROLES)}.",
            code="invalid",
            fields={"role": f"use one of {', '.join(ROLES)}"},
        )


def _check_password(password: str, user: Any) -> None:
    try:
        # AUTH_PASSWORD_VALIDATORS, with the user so a password like the name is refused.
        validate_password(password, user=user)
    except ValidationError as exc:
        reasons = " ".join(exc.messages)
        raise ApplicationError(
            f"The password was refused: {reasons} The rules: "
            + " ".join(password_validators_help_texts()),
            code="weak_password",
            fields={"password": reasons},
        ) from None


def _check_keeps_an_admin(user: AbstractUser, role: str) -> None:
    """Taking the admin role from the last active admin would leave nobody who can manage
    users, training or promotion (only a shell on the server could repair it)."""
    if role == ADMIN or user.is_superuser or not user.groups.filter(name=ADMIN).exists():
        return
    admins = (
        get_user_model()
        .objects.filter(Q(groups__name=ADMIN) | Q(is_superuser=True), is_active=True)
        .exclude(pk=user.pk)
    )
    if not admins.exists():
        raise ApplicationError(
            f"{user.get_username()} is the last admin; their admin role cannot be removed. "
            "Make another user an admin first.",
            code="last_admin",
            fields={"role": "the last admin must stay an admin"},
            status=409,
        )


def _role_set(user: AbstractUser, role: str, groups: dict[str, Group]) -> None:
    user.is_staff = role == ADMIN  # the Django admin site is for admins only
    user.save(update_fields=["is_staff"])
    user.groups.set([groups[role]])


@transaction.atomic
def user_create(
    *, username: str, password: str, role: str, actor: UserLike | None = None
) -> AbstractUser:
    """A new user in exactly one role; 409 when the username is taken (nothing changes:
    its role changes through :func:`user_role_update`)."""
    _check_role(role)
    user_model = get_user_model()
    if user_model.objects.filter(username=username).exists():
        raise ApplicationError(
            f"A user named {username!r} exists already; nothing was changed. To change "
            'their role, PATCH /api/users/{id}/ with {"role": ...}.',
            code="user_exists",
            fields={"username": "taken"},
            status=409,
        )
    groups = roles_ensure()
    user = user_model(username=username)
    _check_password(password, user)
    user.set_password(password)
    user.save()
    _role_set(user, role, groups)
    audit_event_create(
        actor=actor, action="user.create", target_type="user", target_id=user.pk,
        after={"username": username, "role": role},
    )  # fmt: skip
    return user  # type: ignore[no-any-return]


@transaction.atomic
def user_role_update(*, user_id: int, role: str, actor: UserLike | None) -> AbstractUser:
    """Move a user to exactly one role; refused (409) for the last admin's admin role."""
    _check_role(role)
    groups = roles_ensure()
    # Every role change takes the admin group's row lock, so two admins demoting each
    # other at once cannot both pass the last-admin guard.
    Group.objects.select_for_update().filter(pk=groups[ADMIN].pk).first()
    user: AbstractUser = get_or_404(get_user_model(), what="User", pk=user_id)
    before = sorted(user.groups.filter(name__in=ROLES).values_list("name", flat=True))
    _check_keeps_an_admin(user, role)
    _role_set(user, role, groups)
    audit_event_create(
        actor=actor, action="user.role_change", target_type="user", target_id=user.pk,
        before={"roles": before}, after={"roles": [role]},
    )  # fmt: skip
    return user


@transaction.atomic
def user_create_with_role(*, username: str, password: str, role: str) -> AbstractUser:
    """Create (or re-role) a user in exactly one role: the operator's command-line tool
    (``manage.py create_user``, ``load_demo``). The password is checked only for a new
    user; an existing one keeps theirs. The last admin still cannot be demoted."""
    _check_role(role)
    groups = roles_ensure()
    Group.objects.select_for_update().filter(pk=groups[ADMIN].pk).first()
    user_model = get_user_model()
    user, created = user_model.objects.get_or_create(username=username)
    if created:
        _check_password(password, user)
        user.set_password(password)
        user.save()
    else:
        _check_keeps_an_admin(user, role)
    _role_set(user, role, groups)
    return user  # type: ignore[no-any-return]
