"""Small pieces every API module uses: the strict input base, pagination, the 14-Diff
field, file responses."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, cast

from django.core.files.storage import default_storage
from django.http import FileResponse, QueryDict
from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.errors import ApplicationError
from annotation.models.core import DIFF14_CHOICES
from annotation.types import UserLike
from mlworker.taxonomy import CODES


class InputSerializer(serializers.Serializer):
    """The base of every write body (and of every object nested in one).

    DRF drops keys a serializer does not declare, so a misspelt or made-up key
    (``{"params": {"epochs_finetune": 1}}``) would be accepted and silently ignored: the
    caller believes it took effect. Here an unknown key is a 400 that names it and the
    keys that are allowed. Nested input objects are ``InputSerializer`` too, so the rule
    holds at every level (their errors are named ``params.epochs_finetune``).
    """

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            allowed = [name for name, field in self.fields.items() if not field.read_only]
            unknown = [str(key) for key in data if key not in allowed]
            if unknown:
                hint = (
                    f"not a field of this request; allowed: {', '.join(allowed)}."
                    if allowed
                    else "not a field of this request; it takes no fields."
                )
                raise serializers.ValidationError({key[:64]: [hint] for key in unknown[:20]})
            if not isinstance(data, QueryDict):
                wrong = {
                    name: [problem]
                    for name, field in self.fields.items()
                    if name in data and (problem := _json_type_problem(field, data[name]))
                }
                if wrong:
                    raise serializers.ValidationError(wrong)
        return super().to_internal_value(data)


def _json_type_problem(field: serializers.Field[Any, Any, Any, Any], value: Any) -> str | None:
    """Why a JSON value has the wrong type for ``field``, or None.

    DRF coerces for HTML forms' sake: ``0`` becomes the text "0", ``false`` the number 0,
    "3" the integer 3. In a JSON body that is a caller's mistake the schema forbids, so it
    is a 400 naming the field instead of a value the caller did not mean.
    """
    if value is None or field.read_only:
        return None  # null: the field's own allow_null rule answers
    if isinstance(field, serializers.ListField) and isinstance(value, list):
        child = field.child
        problems = [p for item in value if child and (p := _json_type_problem(child, item))]
        return problems[0] if problems else None
    if isinstance(field, serializers.BooleanField):
        ok = isinstance(value, bool)
        wanted = "true or false"
    elif isinstance(field, serializers.IntegerField):
        ok = not isinstance(value, bool) and (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        )
        wanted = "an integer"
    elif isinstance(field, serializers.FloatField):
        ok = not isinstance(value, bool) and isinstance(value, int | float)
        wanted = "a number"
    elif isinstance(field, serializers.CharField | serializers.ChoiceField):
        ok = isinstance(value, str)
        wanted = "a string"
    else:
        return None
    return None if ok else f"must be {wanted}, not {json.dumps(value)[:64]}."


class NoInputSerializer(InputSerializer):
    """The body of an action that takes no input: empty, or a JSON object with no keys."""


def query_input(request: Request) -> dict[str, str]:
    """The query string for a filter serializer, as a plain dict.

    Given the ``QueryDict`` itself, DRF reads it as an HTML form, where an empty value of
    an optional field means "not given": ``?status=`` or ``?since=`` would be silently
    ignored. Here an empty value is a value, so a filter that is not valid is a 400
    naming it (the browser client leaves unset filters out, frontend/src/api/http.ts).
    """
    return request.query_params.dict()


def no_input(request: Request) -> None:
    """Refuse a body with keys on an action that reads none (400 naming them), instead
    of doing the action and ignoring what the caller thought they asked for."""
    NoInputSerializer(data=request.data or {}).is_valid(raise_exception=True)


class Pagination(LimitOffsetPagination):
    """Pages of at most 500. A ``limit`` or ``offset`` that is not a number in range is a
    400 naming it; DRF would silently use the default instead, and the caller would read
    a page they did not ask for as if it were the one they did."""

    default_limit = 50
    max_limit = 500

    class PageParamsSerializer(serializers.Serializer):
        limit = serializers.IntegerField(min_value=1, max_value=500, required=False)
        offset = serializers.IntegerField(min_value=0, max_value=2**31 - 1, required=False)

    def paginate_queryset(self, queryset: Any, request: Any, view: Any = None) -> Any:
        params = self.PageParamsSerializer(
            data={
                k: request.query_params[k] for k in ("limit", "offset") if k in request.query_params
            }
        )
        params.is_valid(raise_exception=True)
        return super().paginate_queryset(queryset, request, view)


def paginated_response(
    *,
    request: Request,
    view: APIView,
    queryset: Iterable[Any],
    serializer_class: type[serializers.BaseSerializer[Any]],
    context: dict[str, Any] | None = None,
) -> Response:
    paginator = Pagination()
    page: list[Any] | None = paginator.paginate_queryset(queryset, request, view=view)  # type: ignore[arg-type]
    data = serializer_class(page, many=True, context={"request": request, **(context or {})}).data
    return paginator.get_paginated_response(data)


_PAGED: dict[type, type] = {}


def paginated(serializer_class: type[serializers.BaseSerializer[Any]]) -> type:
    """The schema of a page of ``serializer_class`` (count, next, previous, results)."""
    if serializer_class not in _PAGED:
        name = serializer_class.__name__.removesuffix("Serializer")
        _PAGED[serializer_class] = type(
            f"Paginated{name}List",
            (serializers.Serializer,),
            {
                "count": serializers.IntegerField(),
                "next": serializers.URLField(allow_null=True),
                "previous": serializers.URLField(allow_null=True),
                "results": serializer_class(many=True),
            },
        )
    return _PAGED[serializer_class]


class Choice(serializers.ChoiceField):
    """A choice whose error names the allowed values."""

    def to_internal_value(self, data: Any) -> Any:
        try:
            return super().to_internal_value(data)
        except serializers.ValidationError:
            allowed = ", ".join(str(c) for c in self.choices)
            raise serializers.ValidationError(
                f"{str(data)[:64]!r} is not allowed; use one of {allowed}.", code="invalid_choice"
            ) from None


class JSONObjectField(serializers.DictField):
    """A free-form JSON object. PostgreSQL cannot store the NUL character in JSON, so it
    is refused here with a message instead of failing in the database."""

    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if "\\u0000" in json.dumps(value):
            raise serializers.ValidationError(
                "must not contain the NUL character (\\u0000).", code="null_character"
            )
        return value


class Diff14Field(serializers.ChoiceField):
    """A 14-Diff code; lower case is accepted, the error lists the allowed codes."""

    default_error_messages = {
        "invalid_choice": "{input!r} is not a 14-Diff code; use one of " + ", ".join(CODES) + "."
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=DIFF14_CHOICES, **kwargs)

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str):
            data = data.strip().upper()
        return super().to_internal_value(data)


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    fields = serializers.DictField(child=serializers.CharField())  # type: ignore[assignment]


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


def storage_file_response(name: str | None, *, filename: str | None = None) -> FileResponse:
    if not name or not default_storage.exists(name):
        raise ApplicationError(
            "The file is missing from storage; ask an admin to check the media volume.",
            code="file_missing",
            status=404,
        )
    return FileResponse(
        default_storage.open(name, "rb"),
        as_attachment=filename is not None,
        filename=filename or name.rsplit("/", 1)[-1],
    )


def request_user(request: Request) -> UserLike:
    """The signed-in user (permission classes have already refused anonymous requests)."""
    return cast("UserLike", request.user)
