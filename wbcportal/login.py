"""The sign-in forms (the portal's and the admin site's) and django-axes' hooks into them.

Axes refuses a locked-out username and address before the password is checked (its
backend) and flags the request (``axes_locked_out``); the forms turn that flag into an
error saying when to retry (annotation/services/login_throttle.py), and AxesMiddleware
answers 429 with that page (:func:`lockout_response`).
"""

from __future__ import annotations

from typing import Any

from axes.backends import AxesStandaloneBackend
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from annotation.errors import error_body
from annotation.services.login_throttle import login_lockout_error

LOCKED = "login_locked"


class LockoutBackend(AxesStandaloneBackend):
    """Axes' backend, for sign-ins that come with a request. Django's test client and a
    shell authenticate without one, which axes refuses with an exception; with no client
    address there is no pair to lock, so they go on to the password check."""

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> None:
        if request is not None:
            super().authenticate(request, username, password, **kwargs)


class ThrottledLoginMixin:
    request: Any

    def clean(self) -> dict[str, Any]:
        try:
            cleaned: dict[str, Any] = super().clean()  # type: ignore[misc]
        except ValidationError:
            if getattr(self.request, "axes_locked_out", False):
                message = login_lockout_error(self.request).message
                raise ValidationError(message, code=LOCKED) from None
            raise
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


def lockout_response(
    request: HttpRequest, original_response: Any = None, credentials: Any = None
) -> HttpResponse:
    """``AXES_LOCKOUT_CALLABLE``: AxesMiddleware's answer to a request axes locked out.

    The sign-in forms have already shown why, so their page is kept, as a 429 (the admin
    site's too). Axes 8.3.1 passes no page when it runs as async middleware
    (jazzband/django-axes#1494), so then the portal's sign-in page is rendered here. The
    token endpoint answers by itself (DRF's request carries axes' flag, not Django's).
    """
    if request.path.startswith("/api/"):
        error = login_lockout_error(request)
        return JsonResponse(
            error_body(error.code, error.message, error.fields),
            status=429,
            headers={"Retry-After": error.fields["retry_after"]},
        )
    if isinstance(original_response, HttpResponse) and original_response.status_code in (
        200,
        429,
    ):
        original_response.status_code = 429
        return original_response
    message = login_lockout_error(request).message
    return render(request, "registration/login.html", {"login_locked": message}, status=429)
