"""The one application error type; the API's exception handler turns it into JSON."""

from __future__ import annotations

from typing import TypeVar

from django.db import models

_M = TypeVar("_M", bound=models.Model)


class ApplicationError(Exception):
    def __init__(
        self,
        message: str,
        *,
        code: str = "invalid",
        fields: dict[str, str] | None = None,
        status: int = 400,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.fields = fields or {}
        self.status = status


def get_or_404(queryset: type[_M] | models.QuerySet[_M], *, what: str, **lookup: object) -> _M:
    """The row the lookup names, or the API's 404: "<what> <value> does not exist."."""
    qs = queryset._default_manager.all() if isinstance(queryset, type) else queryset
    try:
        return qs.get(**lookup)
    except (qs.model.DoesNotExist, ValueError, TypeError):
        shown = ", ".join(str(v) for v in lookup.values())
        raise ApplicationError(
            f"{what} {shown} does not exist.", code="not_found", status=404
        ) from None
