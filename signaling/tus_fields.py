"""The tus 1.0 request headers, checked, and the tus errors (see :mod:`signaling.tus`
for the routes).

Source: the tus resumable upload protocol 1.0.0 (https://tus.io/protocols/resumable-upload),
sections "Core Protocol" (``Upload-Offset``, ``Tus-Resumable``), "Creation"
(``Upload-Length``, ``Upload-Metadata``), "Checksum" (``Upload-Checksum``) and
"Expiration" (``Upload-Expires``, RFC 9110 section 5.6.7 IMF-fixdate).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from aiohttp import web

from protocol.messages import is_valid_job_id
from signaling import metrics
from signaling.api_common import ApiError, ApiErrorCode, now_timestamp
from signaling.auth import Caller, Role
from signaling.db import UploadRecord
from signaling.keys import is_valid_owner

__all__ = [
    "CHECKSUMS",
    "TUS_VERSION",
    "Checksum",
    "TusError",
    "counter",
    "http_date",
    "init_body",
    "metadata_header",
    "parse_checksum",
    "parse_metadata",
    "result_of",
]

TUS_VERSION = "1.0.0"
"""The one protocol version served (``Tus-Resumable``, ``Tus-Version``)."""

CHECKSUMS: dict[str, Callable[[], Any]] = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}
"""``Upload-Checksum`` algorithms (``Tus-Checksum-Algorithm``): sha1 (what tuspy sends) and
sha256."""

MAX_METADATA_PAIRS = 32
"""Most ``Upload-Metadata`` pairs accepted (aiohttp caps the header at 8190 bytes)."""

DEFAULT_FILE_NAME = "upload"
"""The ``file_name`` of an upload whose metadata names no file."""

DEFAULT_USER_ID = "tus"
"""The ``user_id`` label of an upload whose metadata gives none."""


class TusError(Exception):
    """A tus request refused with a status the storage routes' codes lack.

    Attributes:
        status: the HTTP status (409, 410, 412, 415, 423, 460, ...).
        code: the error code of the JSON body (``OFFSET_MISMATCH``, ...).
        message: what went wrong, for a person.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> web.Response:
        """The JSON error ``{"error": {"code", "message", "timestamp"}}``."""
        metrics.api_error(self.code)
        body = {"error": {"code": self.code, "message": self.message, "timestamp": now_timestamp()}}
        reason = "Checksum Mismatch" if self.status == 460 else None
        return web.json_response(body, status=self.status, reason=reason)


def http_date(moment: datetime) -> str:
    """``moment`` as an IMF-fixdate, ``Wed, 25 Jun 2014 16:00:00 GMT`` (RFC 9110 5.6.7)."""
    return format_datetime(moment.astimezone(UTC), usegmt=True)


def counter(value: str | None, name: str) -> int:
    """A header holding a byte count or offset: ASCII digits only, at most 19 of them.

    Raises:
        ApiError: MISSING_FIELD when absent, INVALID_FIELD when not such a number.
    """
    if value is None or value == "":
        raise ApiError(ApiErrorCode.MISSING_FIELD, f"the {name} header is required")
    if not (value.isascii() and value.isdigit()) or len(value) > 19:
        raise ApiError(ApiErrorCode.INVALID_FIELD, f"{name} must be an integer >= 0")
    return int(value)


def parse_metadata(header: str | None) -> dict[str, str]:
    """``Upload-Metadata``: comma-separated ``key base64(value)`` pairs, the value may be
    absent; keys unique, non-empty, without spaces or commas. An empty header (tuspy's
    when there is no metadata) is no metadata.

    Raises:
        ApiError: INVALID_FIELD for a malformed header, a value that is not base64 of
            UTF-8 text, or more than :data:`MAX_METADATA_PAIRS` pairs.
    """
    found: dict[str, str] = {}
    if header is None or not header.strip():
        return found
    pairs = header.split(",")
    if len(pairs) > MAX_METADATA_PAIRS:
        raise ApiError(ApiErrorCode.INVALID_FIELD, "Upload-Metadata holds too many pairs")
    for pair in pairs:
        parts = pair.strip().split(" ")
        if len(parts) not in (1, 2) or not parts[0] or parts[0] in found:
            raise ApiError(ApiErrorCode.INVALID_FIELD, "Upload-Metadata is malformed")
        try:
            value = base64.b64decode(parts[1], validate=True).decode() if len(parts) == 2 else ""
        except (binascii.Error, UnicodeDecodeError):
            raise ApiError(
                ApiErrorCode.INVALID_FIELD, f"Upload-Metadata {parts[0]!r} is not base64 text"
            ) from None
        found[parts[0]] = value
    return found


def _first(meta: dict[str, str], *names: str) -> str | None:
    for name in names:
        if meta.get(name):
            return meta[name]
    return None


def init_body(
    meta: dict[str, str], length: int, caller: Caller
) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """The init body of :meth:`UploadManager.init` for a tus upload of ``length`` bytes,
    and the result it is also stored as.

    Metadata keys: ``filename`` (or ``name``) -> ``file_name``; ``filetype`` (or ``type``,
    ``content_type``) -> ``content_type``; ``user_id``, ``user_role`` -> the labels of
    the upload's key (defaults ``tus`` and the caller's role). ``job_id`` makes it a
    result upload of the ``owner`` key (a fingerprint or ``anon-`` principal, as
    ``POST /upload`` takes ``X-Owner``), kept in the record's ``result_owner`` and
    ``result_job_id``; a client key may not store results.

    Returns:
        ``(body, result)``: ``result`` is ``(owner, job_id)``, or ``None`` without
        ``job_id``.

    Raises:
        ApiError: FORBIDDEN (a client key with ``job_id``); MISSING_FIELD (``job_id``
            without ``owner``); INVALID_FIELD (a malformed ``job_id`` or ``owner``).
    """
    body: dict[str, Any] = {
        "file_name": _first(meta, "filename", "name") or DEFAULT_FILE_NAME,
        "total_size": length,
        "content_type": _first(meta, "filetype", "type", "content_type") or "",
        "user_id": meta.get("user_id") or DEFAULT_USER_ID,
        "user_role": meta.get("user_role") or caller.role.value,
    }
    job_id = meta.get("job_id")
    if job_id is None:
        return body, None
    if caller.role is Role.CLIENT:
        raise ApiError(ApiErrorCode.FORBIDDEN, "a client key may not store results")
    if not is_valid_job_id(job_id):
        raise ApiError(
            ApiErrorCode.INVALID_FIELD, "job_id must match [A-Za-z0-9._-]{1,64}, not only dots"
        )
    owner = meta.get("owner")
    if not owner:
        raise ApiError(ApiErrorCode.MISSING_FIELD, "owner (the result's owner) is required")
    if not is_valid_owner(owner):
        raise ApiError(ApiErrorCode.INVALID_FIELD, "owner must be a fingerprint or anon- principal")
    return body, (owner, job_id)


def result_of(record: UploadRecord) -> tuple[str, str] | None:
    """``(owner, job_id)`` of a result upload (see :func:`init_body`), else ``None``."""
    if record.result_owner is None or record.result_job_id is None:
        return None
    return record.result_owner, record.result_job_id


def metadata_header(record: UploadRecord) -> str:
    """The ``Upload-Metadata`` of ``record`` as HEAD answers it."""
    meta = {
        "filename": record.file_name,
        "filetype": record.content_type,
        "user_id": record.user_id,
        "user_role": record.user_role,
    }
    result = result_of(record)
    if result is not None:
        meta.update(owner=result[0], job_id=result[1])
    if record.relay:
        meta["relay"] = "1"
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in meta.items())


class Checksum:
    """An ``Upload-Checksum`` to check a request's body against.

    Attributes:
        algorithm: a key of :data:`CHECKSUMS`.
        expected: the digest the body must have.
    """

    def __init__(self, algorithm: str, expected: bytes) -> None:
        self.algorithm = algorithm
        self.expected = expected
        self._hasher = CHECKSUMS[algorithm]()

    def update(self, data: bytes | bytearray) -> None:
        """Hash the next piece of the body."""
        self._hasher.update(data)

    def check(self) -> None:
        """Raises TusError 460 CHECKSUM_MISMATCH unless the body had the digest."""
        if self._hasher.digest() != self.expected:
            raise TusError(
                460, "CHECKSUM_MISMATCH", f"the body's {self.algorithm} is not the one given"
            )


def parse_checksum(header: str | None) -> Checksum | None:
    """``Upload-Checksum: <algorithm> <base64 digest>``, or ``None`` when absent.

    Raises:
        ApiError: INVALID_FIELD for an algorithm not in :data:`CHECKSUMS` or a digest
            that is not base64 of the algorithm's length (400, as the spec says).
    """
    if header is None:
        return None
    name, _, encoded = header.strip().partition(" ")
    if name not in CHECKSUMS:
        raise ApiError(
            ApiErrorCode.INVALID_FIELD,
            f"checksum algorithm {name!r} is not supported; use {', '.join(CHECKSUMS)}",
        )
    try:
        expected = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        raise ApiError(ApiErrorCode.INVALID_FIELD, "Upload-Checksum is not base64") from None
    if len(expected) != CHECKSUMS[name]().digest_size:
        raise ApiError(ApiErrorCode.INVALID_FIELD, f"a {name} digest has another length")
    return Checksum(name, expected)
