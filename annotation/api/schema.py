"""The OpenAPI schema tells the whole truth about errors and pages.

Every operation of this API can answer some errors whatever it does: 401/403 when it needs
a signed-in user, 429 when throttled, 503 when the database or Redis is down, 400/413 when
it reads a body, 400 when it reads query parameters, 404 when its path names an object.
Writing those on each of ~50 views would drift; ``add_error_responses`` (a drf-spectacular
postprocessing hook, wbcportal/settings_api.py) adds them to every operation, all with the
one error shape of annotation/api/common.py ``ErrorSerializer``. What only some views can
answer (409 conflicts, 404s of a looked-up body field) is declared on the view with
``error_responses(409)``.

The hook also declares ``limit``/``offset`` on the operations that answer a page
(``paginated(...)`` in common.py): views are plain ``APIView``s, so drf-spectacular cannot
see the paginator.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers
from rest_framework.fields import empty

from annotation.api.common import ErrorSerializer, InputSerializer

ERROR_COMPONENT = "#/components/schemas/Error"

_DESCRIPTIONS = {
    400: "The request was not valid: `fields` names each offending input.",
    401: "Not signed in, or the token is unknown or revoked.",
    403: "The caller's role may not use this operation (or a browser session sent no CSRF token).",
    404: "The object named in the path (or in the request) does not exist.",
    409: "The request conflicts with the current state; `message` says what to do.",
    413: "The body is larger than the server accepts (WBC_MAX_BODY_BYTES).",
    429: "Too many requests; `Retry-After` says when to try again.",
    503: "The database or Redis is unavailable; `Retry-After` says when to try again.",
}

_WRITE_METHODS = {"post", "put", "patch", "delete"}
_PAGE_PARAMETERS = [
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": "Number of results to return per page (at most 500; default 50).",
        "schema": {"type": "integer", "minimum": 1, "maximum": 500},
    },
    {
        "name": "offset",
        "in": "query",
        "required": False,
        "description": "The initial index from which to return the results.",
        "schema": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
    },
]


class AutoSchema(SpectacularAutoSchema):
    """drf-spectacular's schema, with response fields required as they are sent.

    drf-spectacular marks a response field optional when the serializer would not require
    it as input, so every model field with a default came out optional although DRF always
    writes it. In a response, a field is optional here only where the serializer says so
    itself (declared ``required=False`` without a default: DRF then leaves it out when the
    object lacks it).

    Request bodies are ``InputSerializer``s, which refuse keys they do not declare (400),
    so their schemas say ``additionalProperties: false``.
    """

    def _map_basic_serializer(
        self, serializer: serializers.BaseSerializer[Any], direction: str
    ) -> dict[str, Any]:
        schema: dict[str, Any] = super()._map_basic_serializer(serializer, direction)
        if direction == "request" and isinstance(serializer, InputSerializer):
            schema["additionalProperties"] = False
        if direction != "response" or not isinstance(serializer, serializers.Serializer):
            return schema
        declared = getattr(serializer, "_declared_fields", {})
        required = [
            name
            for name in schema.get("properties", {})
            if not _may_be_left_out(declared.get(name))
        ]
        if required:
            schema["required"] = sorted(required)
        return schema


def _may_be_left_out(field: serializers.Field[Any, Any, Any, Any] | None) -> bool:
    if field is None:  # made by ModelSerializer from a model field: always written
        return False
    # DRF keeps the declared arguments in `_kwargs` (to copy fields per serializer).
    declared: dict[str, Any] = getattr(field, "_kwargs", {})
    return declared.get("required") is False and field.default is empty


def error_responses(*codes: int) -> dict[int, OpenApiResponse]:
    """``extend_schema(responses={200: X, **error_responses(409)})``: the errors only this
    view can answer, in the API's error shape."""
    return {
        code: OpenApiResponse(response=ErrorSerializer, description=_DESCRIPTIONS[code])
        for code in codes
    }


def _error_response(code: int) -> dict[str, Any]:
    return {
        "description": _DESCRIPTIONS[code],
        "content": {"application/json": {"schema": {"$ref": ERROR_COMPONENT}}},
    }


def _is_authenticated(operation: dict[str, Any]) -> bool:
    # drf-spectacular writes `security: [{}]` (or nothing) for `extend_schema(auth=[])`.
    security: list[dict[str, Any]] = operation.get("security") or []
    return any(requirement for requirement in security)


def _is_page(operation: dict[str, Any]) -> bool:
    ok = operation.get("responses", {}).get("200", {})
    schema = ok.get("content", {}).get("application/json", {}).get("schema", {})
    return str(schema.get("$ref", "")).startswith("#/components/schemas/Paginated")


def _common_errors(method: str, operation: dict[str, Any]) -> list[int]:
    parameters = operation.get("parameters", [])
    codes = [429, 503]
    if _is_authenticated(operation):
        codes += [401, 403]
    if method in _WRITE_METHODS:
        # Any body is parsed (even on actions that read none, which refuse keys: 400).
        codes += [400, 413]
    if any(p.get("in") == "query" for p in parameters):
        codes.append(400)
    if any(p.get("in") == "path" for p in parameters):
        codes.append(404)
    return codes


def _json_bodies_only(operation: dict[str, Any]) -> None:
    """A body with nested objects or lists cannot be sent as a form (DRF would drop the
    nested parts), so where JSON is accepted JSON is what the schema offers. The upload,
    multipart only, keeps its one media type."""
    content = operation.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        for media_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            content.pop(media_type, None)


def add_error_responses(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: the common error responses and the page
    parameters on every operation (see the module docstring)."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    if "Error" not in schemas:
        schemas["ErrorDetail"] = {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "fields": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "required": ["code", "fields", "message"],
        }
        schemas["Error"] = {
            "type": "object",
            "properties": {"error": {"$ref": "#/components/schemas/ErrorDetail"}},
            "required": ["error"],
        }
    for path_item in result.get("paths", {}).values():
        for method, operation in path_item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            if _is_page(operation):
                names = {p["name"] for p in operation.get("parameters", [])}
                operation.setdefault("parameters", []).extend(
                    p for p in _PAGE_PARAMETERS if p["name"] not in names
                )
            _json_bodies_only(operation)
            responses = operation["responses"]
            for code in sorted(set(_common_errors(method, operation))):
                responses.setdefault(str(code), _error_response(code))
            operation["responses"] = dict(sorted(responses.items()))
    return result
