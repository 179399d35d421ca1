"""Domain errors. Each carries an HTTP status and title so one handler at the API edge can render it as a
JSON problem body (RFC 9457); the core itself knows nothing of HTTP frameworks."""

from __future__ import annotations

from typing import Any


class ProblemError(Exception):
    status = 400
    title = "Bad request"

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.extra = extra


class Unauthorized(ProblemError):
    status, title = 401, "Unauthorized"


class Forbidden(ProblemError):
    status, title = 403, "Forbidden"


class NotFound(ProblemError):
    status, title = 404, "Not found"


class Conflict(ProblemError):
    status, title = 409, "Conflict"


class Gone(ProblemError):
    status, title = 410, "Gone"


class PayloadTooLarge(ProblemError):
    status, title = 413, "Payload too large"


class Unprocessable(ProblemError):
    status, title = 422, "Unprocessable request"


class ServiceUnavailable(ProblemError):
    status, title = 503, "Service unavailable"


class InsufficientStorage(ProblemError):
    status, title = 507, "Insufficient storage"


def one_line(exc: BaseException) -> str:
    """An exception's type and the first line of its message, for a log line that repeats: a heartbeat that
    failed every 2 s through a database outage logged its whole traceback each time (a probe counted 96
    tracebacks in 30 s)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
