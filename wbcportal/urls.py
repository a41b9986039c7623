from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.urls import include, path

from annotation import views
from wbcportal.login import LoginView, ThrottledAdminAuthenticationForm

# The admin site's sign-in goes through the same lockout as the portal's.
admin.site.login_form = ThrottledAdminAuthenticationForm

urlpatterns = [
    # Every page but sign-in and the health check is for signed-in users only
    # (tests/security/test_anonymous.py walks every URL to check it).
    path("", login_required(views.home), name="home"),
    path("health/", views.health, name="health"),
    path("media/<path:path>", views.media, name="media"),
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    # No self-service password reset by e-mail: the portal sends no mail, and admins set
    # passwords (`manage.py create_user`, the admin site).
    path(
        "accounts/password_change/",
        auth_views.PasswordChangeView.as_view(),
        name="password_change",
    ),
    path(
        "accounts/password_change/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("admin/", admin.site.urls),
    path("api/", include("annotation.api.urls")),
]

# A database outage raised outside a view still answers 503, not 500.
handler500 = "wbcportal.middleware.server_error"
