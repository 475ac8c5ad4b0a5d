"""The storage routes' shared HTTP plumbing: the API-key guard and the JSON errors.

Every storage route (results and resumable uploads) requires the configured key as
``X-API-Key: KEY`` or ``Authorization: Bearer KEY`` (compared in constant time), else
401. Errors are JSON ``{"error": {"code", "message", "timestamp"}}`` with the codes of
:class:`ApiErrorCode`; a disk or database failure is a 500 STORAGE_ERROR.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiohttp import web
from loguru import logger

from rtc_worker.storage import format_timestamp

__all__ = [
    "ApiError",
    "ApiErrorCode",
    "Handler",
    "api_key_guard",
    "error_response",
    "now_timestamp",
]


class ApiErrorCode(enum.StrEnum):
    """Codes of the storage routes' JSON errors, each with its HTTP status."""

    UNAUTHORIZED = "UNAUTHORIZED"  # 401: missing or wrong API key
    MISSING_FIELD = "MISSING_FIELD"  # 400: job_id or file missing
    INVALID_FIELD = "INVALID_FIELD"  # 400: malformed job_id, duplicate file part
    NOT_FOUND = "NOT_FOUND"  # 404: unknown job_id
    GONE = "GONE"  # 410: the record was deleted
    FILE_TOO_LARGE = "FILE_TOO_LARGE"  # 413: above storage_max_file_size
    STORAGE_ERROR = "STORAGE_ERROR"  # 500: disk or database failure
    UPLOAD_NOT_FOUND = "UPLOAD_NOT_FOUND"  # 404: unknown (or cancelled) resumable upload
    UPLOAD_COMPLETED = "UPLOAD_COMPLETED"  # 409: the resumable upload is already completed


_STATUS = {
    ApiErrorCode.UNAUTHORIZED: 401,
    ApiErrorCode.MISSING_FIELD: 400,
    ApiErrorCode.INVALID_FIELD: 400,
    ApiErrorCode.NOT_FOUND: 404,
    ApiErrorCode.GONE: 410,
    ApiErrorCode.FILE_TOO_LARGE: 413,
    ApiErrorCode.STORAGE_ERROR: 500,
    ApiErrorCode.UPLOAD_NOT_FOUND: 404,
    ApiErrorCode.UPLOAD_COMPLETED: 409,
}


class ApiError(Exception):
    """A request the store refuses; becomes a JSON error response."""

    def __init__(self, code: ApiErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        """The HTTP status of :attr:`code`."""
        return _STATUS[self.code]


def now_timestamp() -> str:
    """Now as ISO 8601 UTC with second precision."""
    return format_timestamp(datetime.now(UTC))


def error_response(code: ApiErrorCode, message: str) -> web.Response:
    """``{"error": {"code", "message", "timestamp"}}`` with the status of ``code``."""
    response = web.json_response(
        {"error": {"code": code.value, "message": message, "timestamp": now_timestamp()}},
        status=_STATUS[code],
    )
    if code is ApiErrorCode.UNAUTHORIZED:
        response.headers["WWW-Authenticate"] = 'Bearer realm="storage"'
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _presented_key(request: web.Request) -> str | None:
    key = request.headers.get("X-API-Key")
    if key is not None:
        return key
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def api_key_guard(expected: bytes) -> Callable[[Handler], Handler]:
    """Wrap a handler: check the API key, turn :class:`ApiError` into a JSON error."""

    def wrap(handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            given = _presented_key(request)
            if given is None or not hmac.compare_digest(given.encode("utf-8"), expected):
                return error_response(ApiErrorCode.UNAUTHORIZED, "missing or wrong API key")
            try:
                return await handler(request)
            except ApiError as error:
                response = error_response(error.code, error.message)
                if error.code is ApiErrorCode.FILE_TOO_LARGE:
                    response.force_close()
                return response
            except OSError as exc:
                logger.error("storage failure on {} {}: {}", request.method, request.path, exc)
                return error_response(ApiErrorCode.STORAGE_ERROR, "storage failure")

        return guarded

    return wrap
