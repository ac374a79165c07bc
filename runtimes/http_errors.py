"""The error the prediction server answers as a Custom Vision ``{"code", "message"}`` body."""

from __future__ import annotations

__all__ = ["ApiError"]


class ApiError(Exception):
    """An error answered as ``{"code": ..., "message": ...}`` with an HTTP status.

    Args:
        status: the HTTP status.
        code: a Custom Vision-like error code (see :data:`runtimes.server.ERRORS`).
        message: what went wrong and what to do, for the person reading the client's output.
        headers: extra response headers (``Allow`` for a 405).
    """

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
