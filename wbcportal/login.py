"""The sign-in forms (the portal's and the admin site's), with the login throttle
(annotation/services/login_throttle.py) in front of the password check."""

from __future__ import annotations

from typing import Any

from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.http import HttpResponse

from annotation.errors import ApplicationError
from annotation.services.login_throttle import (
    client_address,
    login_failure_record,
    login_success_reset,
    login_throttle_check,
)

LOCKED = "login_locked"


class ThrottledLoginMixin:
    request: Any
    cleaned_data: dict[str, Any]

    def clean(self) -> dict[str, Any]:
        username = str(self.cleaned_data.get("username") or "")
        password = self.cleaned_data.get("password")
        address = client_address(self.request)
        try:
            login_throttle_check(username=username, address=address)
        except ApplicationError as exc:
            raise ValidationError(exc.message, code=LOCKED) from None
        try:
            cleaned: dict[str, Any] = super().clean()  # type: ignore[misc]
        except ValidationError:
            if username and password:
                login_failure_record(username=username, address=address)
                try:
                    login_throttle_check(username=username, address=address)
                except ApplicationError as exc:
                    raise ValidationError(exc.message, code=LOCKED) from None
            raise
        login_success_reset(username=username, address=address)
        return cleaned


class ThrottledAuthenticationForm(ThrottledLoginMixin, AuthenticationForm):
    pass


class ThrottledAdminAuthenticationForm(ThrottledLoginMixin, AdminAuthenticationForm):
    pass


def lockout_message(form: Any) -> str | None:
    for error in form.errors.as_data().get("__all__", []):
        if error.code == LOCKED:
            return str(error.message)
    return None


class LoginView(auth_views.LoginView):
    """Django's sign-in view; a locked-out pair gets 429 and the time to retry."""

    authentication_form = ThrottledAuthenticationForm

    def form_invalid(self, form: Any) -> HttpResponse:
        locked = lockout_message(form)
        response = self.render_to_response(self.get_context_data(form=form, login_locked=locked))
        if locked:
            response.status_code = 429
        return response
