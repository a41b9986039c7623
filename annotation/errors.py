"""The one application error type; the API's exception handler turns it into JSON."""

from __future__ import annotations


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
