"""The storage routes' shared HTTP plumbing: the JSON errors and the middleware that
makes every answer of a storage route JSON.

Errors are JSON ``{"error": {"code", "message", "timestamp"}}`` with the codes of
:class:`ApiErrorCode`, each with one HTTP status. :func:`json_errors` (an aiohttp
middleware, added by :func:`signaling.results_api.setup_storage`) turns everything a
storage route can raise into one: :class:`ApiError`; aiohttp's own refusals (404 no
such route, 405, 413); a full disk, from the file layer or SQLite (507 DISK_FULL); any
other disk or database failure (500 STORAGE_ERROR); anything else (500 INTERNAL_ERROR,
logged without the request's secrets). Routes outside the storage service (``/health``,
``/ws``) are left alone.
"""

from __future__ import annotations

import asyncio
import enum
import traceback
from datetime import UTC, datetime

from aiohttp import web
from aiohttp.typedefs import Handler
from loguru import logger

from rtc_worker.storage import format_timestamp
from signaling import metrics
from signaling.db_engine import STORAGE_ERRORS, StoreLockTimeoutError, is_disk_full

__all__ = [
    "STORAGE_ROUTE_ROOTS",
    "ApiError",
    "ApiErrorCode",
    "error_response",
    "json_errors",
    "now_timestamp",
]

STORAGE_ROUTE_ROOTS = frozenset({"upload", "download", "delete", "list", "api", "relay"})
"""First path segments of the storage routes (their answers are always JSON)."""


class ApiErrorCode(enum.StrEnum):
    """Codes of the storage routes' JSON errors, each with its HTTP status."""

    UNAUTHORIZED = "UNAUTHORIZED"  # 401: missing, unknown or malformed key
    KEY_REVOKED = "KEY_REVOKED"  # 401: the key was revoked by the operator
    TOKEN_INVALID = "TOKEN_INVALID"  # 401: a malformed or forged download token
    TOKEN_EXPIRED = "TOKEN_EXPIRED"  # 401: a download token past its expiry
    FORBIDDEN = "FORBIDDEN"  # 403: the key's role may not do this; a token of another job
    MISSING_FIELD = "MISSING_FIELD"  # 400: job_id, file or owner missing
    INVALID_FIELD = "INVALID_FIELD"  # 400: malformed job_id or owner, duplicate file part
    SHA256_MISMATCH = "SHA256_MISMATCH"  # 400: the content has another sha256 than declared
    NOT_FOUND = "NOT_FOUND"  # 404: unknown job_id (for this owner), or no such route
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"  # 405: the route has no such method
    JOB_EXISTS = "JOB_EXISTS"  # 409: a live result of this owner and job_id exists
    GONE = "GONE"  # 410: the record was deleted, or replaced since the token was issued
    FILE_TOO_LARGE = "FILE_TOO_LARGE"  # 413: above storage_max_file_size
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"  # 413: the principal's open uploads are at the quota
    DISK_FULL = "DISK_FULL"  # 507: the upload would eat into the disk reserve, or no space
    STORAGE_ERROR = "STORAGE_ERROR"  # 500: disk or database failure
    INTERNAL_ERROR = "INTERNAL_ERROR"  # 500: a bug; logged
    UPLOAD_NOT_FOUND = "UPLOAD_NOT_FOUND"  # 404: unknown (or cancelled, or not yours) upload
    UPLOAD_COMPLETED = "UPLOAD_COMPLETED"  # 409: the resumable upload is already completed
    RANGE_NOT_SATISFIABLE = "RANGE_NOT_SATISFIABLE"  # 416: a download's Range names no byte
    STORAGE_BUSY = "STORAGE_BUSY"  # 503: the storage lock was busy, or a race lost; retry
    RELAY_NOT_FOUND = "RELAY_NOT_FOUND"  # 404: no such relay object, or not this token


_STATUS = {
    ApiErrorCode.UNAUTHORIZED: 401,
    ApiErrorCode.KEY_REVOKED: 401,
    ApiErrorCode.TOKEN_INVALID: 401,
    ApiErrorCode.TOKEN_EXPIRED: 401,
    ApiErrorCode.FORBIDDEN: 403,
    ApiErrorCode.MISSING_FIELD: 400,
    ApiErrorCode.INVALID_FIELD: 400,
    ApiErrorCode.SHA256_MISMATCH: 400,
    ApiErrorCode.NOT_FOUND: 404,
    ApiErrorCode.METHOD_NOT_ALLOWED: 405,
    ApiErrorCode.JOB_EXISTS: 409,
    ApiErrorCode.GONE: 410,
    ApiErrorCode.FILE_TOO_LARGE: 413,
    ApiErrorCode.QUOTA_EXCEEDED: 413,
    ApiErrorCode.DISK_FULL: 507,
    ApiErrorCode.STORAGE_ERROR: 500,
    ApiErrorCode.INTERNAL_ERROR: 500,
    ApiErrorCode.UPLOAD_NOT_FOUND: 404,
    ApiErrorCode.UPLOAD_COMPLETED: 409,
    ApiErrorCode.RANGE_NOT_SATISFIABLE: 416,
    ApiErrorCode.STORAGE_BUSY: 503,
    ApiErrorCode.RELAY_NOT_FOUND: 404,
}

_HTTP_CODES = {
    401: ApiErrorCode.UNAUTHORIZED,
    403: ApiErrorCode.FORBIDDEN,
    404: ApiErrorCode.NOT_FOUND,
    405: ApiErrorCode.METHOD_NOT_ALLOWED,
    413: ApiErrorCode.FILE_TOO_LARGE,
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
    metrics.api_error(code.value)
    response = web.json_response(
        {"error": {"code": code.value, "message": message, "timestamp": now_timestamp()}},
        status=_STATUS[code],
    )
    if _STATUS[code] == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="storage"'
    return response


def _is_storage_route(request: web.Request) -> bool:
    return request.path.lstrip("/").split("/", 1)[0] in STORAGE_ROUTE_ROOTS


def _refusal(exc: BaseException, request: web.Request) -> web.Response:
    """The JSON answer for what a storage handler raised (re-raises what is not ours)."""
    if isinstance(exc, ApiError):
        return error_response(exc.code, exc.message)
    if isinstance(exc, web.HTTPException):
        code = _HTTP_CODES.get(exc.status)
        if code is None:
            code = ApiErrorCode.INVALID_FIELD if exc.status < 500 else ApiErrorCode.INTERNAL_ERROR
        return error_response(code, exc.reason or code.value)
    if isinstance(exc, StoreLockTimeoutError):
        logger.warning("storage lock busy on {} {}", request.method, request.path)
        return error_response(ApiErrorCode.STORAGE_BUSY, str(exc))
    if is_disk_full(exc):
        logger.warning("disk full on {} {}", request.method, request.path)
        return error_response(ApiErrorCode.DISK_FULL, "the storage disk is full")
    if isinstance(exc, STORAGE_ERRORS):
        logger.error("storage failure on {} {}: {}", request.method, request.path, exc)
        return error_response(ApiErrorCode.STORAGE_ERROR, "storage failure")
    # the traceback's lines only: no variable values (they may hold a key)
    trace = "".join(traceback.format_exception(exc))
    logger.error("unexpected failure on {} {}:\n{}", request.method, request.path, trace)
    return error_response(ApiErrorCode.INTERNAL_ERROR, "internal error")


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every failure of a storage route as a JSON error (see the module docstring).

    A refused request whose body was not read closes its connection afterwards, so a
    large body is not read only to be thrown away.
    """
    if not _is_storage_route(request):
        return await handler(request)
    try:
        return await handler(request)
    except asyncio.CancelledError:
        raise
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _refusal(exc, request)
    except Exception as exc:
        response = _refusal(exc, request)
    if request.body_exists and not request.content.is_eof():
        response.force_close()
    return response
