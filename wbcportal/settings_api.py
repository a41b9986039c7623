"""REST API settings (DRF, drf-spectacular, throttling, exports), from the environment.

Imported at the end of ``wbcportal/settings.py``. See annotation/api/README.md.
"""

from __future__ import annotations

import os

REST_FRAMEWORK = {
    # Token first: an anonymous request then gets 401 with `WWW-Authenticate: Token`
    # rather than a bare 403. Session auth (with CSRF) is for the browser UI.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # DRF's token authentication, in two SQL queries with the roles (authentication.py)
        "annotation.api.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # Every view declares its roles (annotation/api/permissions.py); one that forgets is
    # closed to everybody rather than open.
    "DEFAULT_PERMISSION_CLASSES": ["annotation.api.permissions.DenyUndeclared"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        # Bounded in size (413) and JSON depth (400): annotation/api/parsers.py
        "annotation.api.parsers.BoundedJSONParser",
        "annotation.api.parsers.BoundedFormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["annotation.api.throttling.TokenClientThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "token": os.environ.get("WBC_API_TOKEN_RATE", "6000/min"),
        "login": os.environ.get("WBC_API_LOGIN_RATE", "30/min"),
    },
    "EXCEPTION_HANDLER": "annotation.api.errors.api_exception_handler",
    # drf-spectacular's, with response fields required as sent: annotation/api/schema.py
    "DEFAULT_SCHEMA_CLASS": "annotation.api.schema.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": None,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    # `?format=` is the export's own parameter, not DRF's renderer override.
    "URL_FORMAT_OVERRIDE": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "WBC portal API",
    "DESCRIPTION": (
        "Cases, cells, 14-Diff labels, the review queue, model versions, training jobs and "
        "dataset exports. Authenticate with `Authorization: Token <key>` (see "
        "`manage.py issue_token`) or a browser session. Every error has the shape "
        '`{"error": {"code", "message", "fields"}}`.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # A PATCH body is validated like any other (partial=False): its required fields are
    # required, so the schema must not show them optional.
    "COMPONENT_SPLIT_PATCH": False,
    "SCHEMA_PATH_PREFIX": "/api/",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        # every error an operation can answer, and limit/offset on pages: annotation/api/schema.py
        "annotation.api.schema.add_error_responses",
    ],
    "ENUM_NAME_OVERRIDES": {
        "Diff14CodeEnum": "annotation.models.core.DIFF14_CHOICES",
        "CaseStatusEnum": "annotation.models.core.Case.Status",
        "ModelVersionStatusEnum": "annotation.models.pipeline.ModelVersion.Status",
        "TrainingJobStatusEnum": "annotation.models.pipeline.TrainingJob.Status",
        "ExportJobStatusEnum": "annotation.models.pipeline.ExportJob.Status",
        "ReviewItemStatusEnum": "annotation.models.pipeline.ReviewItem.Status",
        "LisDeliveryKindEnum": "annotation.models.lis.LisDelivery.Kind",
        "LisDeliveryStatusEnum": "annotation.models.lis.LisDelivery.Status",
    },
}

# Exports of more cells than this run as a Celery task (ExportJob) instead of streaming.
WBC_EXPORT_SYNC_MAX_CELLS = int(os.environ.get("WBC_EXPORT_SYNC_MAX_CELLS", 5000))
# Uploads through the API: how many files one request may carry.
WBC_UPLOAD_MAX_FILES = int(os.environ.get("WBC_UPLOAD_MAX_FILES", 1000))
DATA_UPLOAD_MAX_NUMBER_FILES = WBC_UPLOAD_MAX_FILES
