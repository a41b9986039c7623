from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser
from django.contrib.auth.password_validation import (
    password_validators_help_texts,
    validate_password,
)
from django.core.exceptions import ValidationError
from django.db import transaction

from annotation.errors import ApplicationError
from annotation.services.roles import ADMIN, ROLES, roles_ensure


@transaction.atomic
def user_create_with_role(*, username: str, password: str, role: str) -> AbstractUser:
    """Create (or re-role) a user in exactly one role group."""
    if role not in ROLES:
        raise ValueError(f"Unknown role {role!r}; use one of {', '.join(ROLES)}")
    groups = roles_ensure()
    user_model = get_user_model()
    user, created = user_model.objects.get_or_create(username=username)
    if created:
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
        user.set_password(password)
    user.is_staff = role == ADMIN  # the Django admin site is for admins only
    user.save()
    user.groups.set([groups[role]])
    return user  # type: ignore[return-value]
