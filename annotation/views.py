from __future__ import annotations

import logging
import mimetypes
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.files.storage import default_storage
from django.db import connection
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import ensure_csrf_cookie

from annotation.errors import RETRY_AFTER_SECONDS, broker_errors
from annotation.roles import user_roles
from annotation.rules import REASON_TEXT

logger = logging.getLogger(__name__)


def ui_boot(request: HttpRequest) -> dict[str, Any]:
    """What the browser UI needs before its first API call: who is signed in, the 14-Diff
    taxonomy with its keys (mlworker/taxonomy.py, the one source of truth) and the rules
    of the differential (annotation/selectors/cases.py)."""
    from annotation.selectors import cases as case_rules
    from mlworker import taxonomy

    return {
        "user": {
            "username": request.user.get_username(),
            "roles": sorted(user_roles(request.user)),
        },
        "taxonomy": [
            {"code": c.code, "name": c.name, "group": c.group, "key": c.key}
            for c in taxonomy.CLASSES
        ],
        "reserved_keys": sorted(taxonomy.RESERVED_KEYS),
        "differential_rules": {
            "not_in_wbc_count": sorted(case_rules.NOT_IN_WBC_COUNT),
            "left_shift_codes": list(case_rules.LEFT_SHIFT_CODES),
            "nrbc_flag_per_100_wbc": case_rules.NRBC_FLAG_PER_100_WBC,
            "nrbc_code": "NR",
            "blast_code": "BL",
            "artifact_code": "AR",
        },
        "queue_reasons": REASON_TEXT,
        "label_prefetch": settings.WBC_LABEL_PREFETCH,
        "urls": {
            "login": settings.LOGIN_URL,
            "logout": reverse("logout"),
            "api": "/api/",
            "events": "/ws/events/",
        },
    }


@ensure_csrf_cookie
def home(request: HttpRequest) -> HttpResponse:
    """The browser UI for signed-in users; a sign-in page link for everyone else."""
    boot = ui_boot(request) if request.user.is_authenticated else None
    return render(request, "index.html", {"user": request.user, "boot": boot})


def health(request: HttpRequest) -> JsonResponse:
    """Liveness and readiness: the database answers (else 503). 200 "degraded" says the
    site serves but work is not getting done: the broker does not answer, or cells are
    stranded (annotation/selectors/pipeline.py; housekeeping queues them again within a
    minute, so a lasting "degraded" means no worker or no beat is running)."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        database = "ok"
    except Exception:  # the point is to report it, whatever it is
        # The details (host, user, the driver's message) go to the log, not to the
        # anonymous caller.
        logger.exception("health check: the database does not answer")
        response = JsonResponse({"status": "error", "database": "unavailable"}, status=503)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    broker = _broker_status()
    pipeline = _pipeline_status() if broker == "redis" else None
    stranded = pipeline is not None and any(stage["stranded"] for stage in pipeline.values())
    body: dict[str, Any] = {
        # Without Redis the pages and the API still answer; new work is not queued.
        "status": "degraded" if broker == "unavailable" or stranded else "ok",
        "database": database,
        "broker": broker,
    }
    if pipeline is not None:
        body["pipeline"] = pipeline
        body["stranded_after_s"] = settings.WBC_STRANDED_AFTER_SECONDS
    return JsonResponse(body)


def _pipeline_status() -> dict[str, dict[str, int | None]] | None:
    """Stranded cells per stage (count, oldest age in seconds); None if it cannot be told."""
    from annotation.selectors.pipeline import pipeline_stranded_summary

    try:
        return pipeline_stranded_summary()
    except Exception:  # a health check reports; it must not fail on what it reports about
        logger.exception("health check: the pipeline state could not be read")
        return None


def _broker_status() -> str:
    if not settings.REDIS_URL:
        return "in-process"
    import redis

    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2).ping()
    except broker_errors():
        logger.warning("health check: Redis does not answer")
        return "unavailable"
    return "redis"


@login_required
def media(request: HttpRequest, path: str) -> FileResponse:
    """Cell images are patient data: only signed-in users get them."""
    if ".." in path.split("/") or not default_storage.exists(path):
        raise Http404("No such file")
    content_type, _ = mimetypes.guess_type(path)
    return FileResponse(default_storage.open(path, "rb"), content_type=content_type)
