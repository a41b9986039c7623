from __future__ import annotations

import mimetypes

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.files.storage import default_storage
from django.db import connection
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "index.html", {"user": request.user})


def health(request: HttpRequest) -> JsonResponse:
    """Liveness and readiness: the database answers."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        database = "ok"
    except Exception as exc:  # the point is to report it, whatever it is
        return JsonResponse({"status": "error", "database": str(exc)}, status=503)
    return JsonResponse(
        {
            "status": "ok",
            "database": database,
            "broker": "redis" if settings.REDIS_URL else "in-process",
        }
    )


@login_required
def media(request: HttpRequest, path: str) -> FileResponse:
    """Cell images are patient data: only signed-in users get them."""
    if ".." in path.split("/") or not default_storage.exists(path):
        raise Http404("No such file")
    content_type, _ = mimetypes.guess_type(path)
    return FileResponse(default_storage.open(path, "rb"), content_type=content_type)
