"""The fields of the resumable-upload requests, checked: the init body, a sha256, the
key category of a MIME type (see :mod:`signaling.uploads_api` for the routes).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

from protocol.names import InvalidNameError, check_name
from rtc_worker.storage import SHA256_HEX, format_timestamp
from signaling.api_common import ApiError, ApiErrorCode
from signaling.db import UploadRecord

__all__ = [
    "GENERIC_TYPES",
    "category_of",
    "ident_field",
    "init_record",
    "sha256_field",
    "text_field",
]

GENERIC_TYPES = frozenset({"", "application/octet-stream", "inode/x-empty"})
"""MIME types that say nothing of the content: a stored upload keeps its declared
``content_type`` instead."""

_IDENT = re.compile(r"[A-Za-z0-9._-]{1,64}")
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,127}/[A-Za-z0-9!#$&^_.+-]{1,127}")
_DOCUMENT_TYPES = frozenset(
    {
        "application/pdf",
        "application/msword",
        "application/rtf",
        "application/json",
        "application/xml",
        "application/epub+zip",
        "application/vnd.ms-excel",
        "application/vnd.ms-powerpoint",
    }
)
_DOCUMENT_PREFIXES = (
    "text/",
    "application/vnd.openxmlformats-officedocument.",
    "application/vnd.oasis.opendocument.",
)


def category_of(mime_type: str) -> str:
    """The key category of ``mime_type``: image, video, audio, document or other."""
    mime = mime_type.split(";", 1)[0].strip().lower()
    for family in ("image", "video", "audio"):
        if mime.startswith(family + "/"):
            return family
    if mime in _DOCUMENT_TYPES or mime.startswith(_DOCUMENT_PREFIXES):
        return "document"
    return "other"


def text_field(body: dict[str, Any], name: str) -> str:
    """The non-empty string field ``name`` of a JSON body.

    Raises:
        ApiError: MISSING_FIELD when absent or empty, INVALID_FIELD when not a string.
    """
    value = body.get(name)
    if value is None or value == "":
        raise ApiError(ApiErrorCode.MISSING_FIELD, f"{name} is required")
    if not isinstance(value, str):
        raise ApiError(ApiErrorCode.INVALID_FIELD, f"{name} must be a string")
    return value


def ident_field(body: dict[str, Any], name: str) -> str:
    """The identifier field ``name`` (``[A-Za-z0-9._-]{1,64}``, no ``..``) of a JSON body.

    Raises:
        ApiError: MISSING_FIELD or INVALID_FIELD.
    """
    value = text_field(body, name)
    if not _IDENT.fullmatch(value) or ".." in value or value == ".":
        raise ApiError(
            ApiErrorCode.INVALID_FIELD, f"{name} must match [A-Za-z0-9._-]{{1,64}}, without .."
        )
    return value


def sha256_field(body: dict[str, Any], name: str = "sha256") -> str | None:
    """The optional sha256 field ``name`` (64 hex digits, returned lowercase).

    Raises:
        ApiError: INVALID_FIELD when present and not 64 hex digits.
    """
    value = body.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not SHA256_HEX.fullmatch(value.strip().lower()):
        raise ApiError(ApiErrorCode.INVALID_FIELD, f"{name} must be 64 hex digits")
    return value.strip().lower()


def init_record(
    body: dict[str, Any],
    *,
    owner: str,
    max_size: int,
    chunk_size: int,
    result: tuple[str, str] | None = None,
    relay: bool = False,
) -> UploadRecord:
    """The new upload an init body asks for (not stored yet).

    Args:
        body: the JSON body ``{file_name, total_size, user_id, user_role, content_type}``.
        owner: the principal of the caller's key.
        max_size: largest ``total_size``, bytes.
        chunk_size: bytes per chunk.
        result: ``(owner, job_id)`` of the result the content is also stored as once
            completed (checked by the caller; never taken from ``body``), or ``None``.
        relay: a relay object (:mod:`signaling.relay_routes`): its file name becomes
            ``{upload_id}.relay`` (unique, so its storage key is found at once).

    Raises:
        ApiError: MISSING_FIELD, INVALID_FIELD, FILE_TOO_LARGE (above ``max_size``).
    """
    file_name = text_field(body, "file_name")
    try:
        check_name(file_name)
    except InvalidNameError as exc:
        raise ApiError(
            ApiErrorCode.INVALID_FIELD, f"file_name is not acceptable: {exc.detail}"
        ) from None
    user_id = ident_field(body, "user_id")
    user_role = ident_field(body, "user_role")
    total_size = body.get("total_size")
    if total_size is None:
        raise ApiError(ApiErrorCode.MISSING_FIELD, "total_size is required")
    if not isinstance(total_size, int) or isinstance(total_size, bool) or total_size < 0:
        raise ApiError(ApiErrorCode.INVALID_FIELD, "total_size must be an integer >= 0")
    if total_size > max_size:
        raise ApiError(ApiErrorCode.FILE_TOO_LARGE, f"the file is larger than {max_size} bytes")
    content_type = body.get("content_type")
    if content_type is None or content_type == "":
        content_type = "application/octet-stream"
    if not isinstance(content_type, str) or not _CONTENT_TYPE.fullmatch(
        content_type.split(";", 1)[0].strip()
    ):
        raise ApiError(ApiErrorCode.INVALID_FIELD, "content_type must be a MIME type")
    now = format_timestamp(datetime.now(UTC))
    upload_id = uuid.uuid4().hex
    return UploadRecord(
        upload_id=upload_id,
        file_name=f"{upload_id}.relay" if relay else file_name,
        total_size=total_size,
        user_id=user_id,
        user_role=user_role,
        content_type=content_type,
        chunk_size=chunk_size,
        status="initiated",
        created_at=now,
        updated_at=now,
        owner=owner,
        result_owner=None if result is None else result[0],
        result_job_id=None if result is None else result[1],
        relay=relay,
    )
