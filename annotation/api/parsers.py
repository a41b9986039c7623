"""The API's body parsers: bounded in size and, for JSON, in nesting depth.

DRF's own parsers read the whole body, however large, and Python's JSON decoder recurses
once per level, so a 30 MiB body or ``[[[[...]]]]`` 100,000 levels deep ended in a 500
(memory, ``RecursionError``). Here a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` is a 413
(read no further than the limit), and JSON nested deeper than ``WBC_API_MAX_JSON_DEPTH``
a 400, both in the API's error shape (annotation/api/errors.py). Multipart uploads keep
Django's parser: its files stream to disk under their own limits (annotation/api/cells.py)
and its form fields are held to the same ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (the exception
handler turns Django's ``RequestDataTooBig`` into the same 413).
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping
from typing import IO, Any

from django.conf import settings
from django.http import QueryDict
from rest_framework import parsers, status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.utils import json


class RequestTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "request_too_large"
    default_detail = "The request body is too large."


def body_limit() -> int:
    return int(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)


def too_large_error(limit: int) -> RequestTooLarge:
    return RequestTooLarge(
        f"The request body is over the limit of {limit} bytes "
        "(DATA_UPLOAD_MAX_MEMORY_SIZE); send less per request, or upload files as "
        "multipart to /api/cells/upload/."
    )


def read_bounded(stream: IO[bytes] | None, parser_context: Mapping[str, Any] | None) -> bytes:
    """The body, read no further than one byte past the limit, whatever Content-Length
    says (a chunked request has none)."""
    limit = body_limit()
    request = (parser_context or {}).get("request")
    declared = request.META.get("CONTENT_LENGTH") if request is not None else None
    if declared and str(declared).isdigit() and int(declared) > limit:
        raise too_large_error(limit)
    data = stream.read(limit + 1) if stream is not None else b""
    if len(data) > limit:
        raise too_large_error(limit)
    return data


def json_depth(value: Any) -> int:
    """How deeply arrays and objects nest in ``value`` (a scalar is 0), without
    recursing, so a deep document cannot exhaust the stack here either."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children)
    return deepest


class BoundedJSONParser(parsers.JSONParser):
    def parse(
        self,
        stream: IO[bytes] | None,
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        max_depth = int(settings.WBC_API_MAX_JSON_DEPTH)
        data = read_bounded(stream, parser_context)
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = codecs.decode(data, encoding)
            parse_constant = json.strict_constant if self.strict else None
            value = json.loads(text, parse_constant=parse_constant)
        except RecursionError:
            raise ParseError(
                f"JSON parse error - nested deeper than the limit of {max_depth} levels."
            ) from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        if json_depth(value) > max_depth:
            raise ParseError(
                f"JSON parse error - nested deeper than the limit of {max_depth} levels."
            )
        return value


class BoundedFormParser(parsers.FormParser):
    def parse(
        self,
        stream: IO[bytes] | None,
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        return QueryDict(read_bounded(stream, parser_context), encoding=encoding)
