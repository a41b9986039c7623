from django.contrib import admin
from django.urls import include, path

from annotation import views

urlpatterns = [
    path("", views.home, name="home"),
    path("health/", views.health, name="health"),
    path("media/<path:path>", views.media, name="media"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    path("api/", include("annotation.api.urls")),
]
