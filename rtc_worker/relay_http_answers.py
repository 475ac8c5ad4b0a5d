"""The relay road's HTTP answers as coded errors (see :mod:`rtc_worker.relay_http`):
which status is which :class:`RelayHttpError` code, whether a ranged answer covers the
range asked, and which relay object a completed tus upload names (:class:`RelayObject`);
also the PATCH body checked against its length (:class:`CheckedBody`). Errors name the
request (an upload id), the status and the service's error code, never a header's
value: no key or token ever reaches their text.

Source: RFC 9110 section 14 (Range, 206, 416), section 15 (status codes).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import NamedTuple

import aiohttp

from protocol.relay_messages import TOKEN_PATTERN

__all__ = [
    "NETWORK_ERRORS",
    "RELAY_GONE",
    "RELAY_REFUSED",
    "RELAY_SHORT",
    "RELAY_UNREACHABLE",
    "CheckedBody",
    "RelayHttpError",
    "RelayObject",
    "check_span",
    "completed",
    "cut",
    "refusal",
    "retryable",
    "service_code",
]

RELAY_GONE = "RELAY_GONE"
"""404/410: the object expired, was deleted, or the token is not its (no oracle)."""
RELAY_REFUSED = "RELAY_REFUSED"
"""401/403: the API key; or a refusal no retry changes (quota, full disk, bad request)."""
RELAY_UNREACHABLE = "RELAY_UNREACHABLE"
"""Connection refused or reset, a timeout, or a 5xx, after the retries."""
RELAY_SHORT = "RELAY_SHORT"
"""The object holds fewer bytes than the range asked (416, or a 206 that ends early)."""


class RelayHttpError(Exception):
    """A relay request that failed for good.

    Attributes:
        code: ``RELAY_GONE``, ``RELAY_REFUSED``, ``RELAY_UNREACHABLE`` or ``RELAY_SHORT``
            (the codes of ``RELAY_ENDED`` but the last, which the receiver reports as
            ``RELAY_CHUNK_INVALID``).
        status: the HTTP status of the last answer, or ``None`` when none came.
        service_code: the error code of the service's JSON answer (``QUOTA_EXCEEDED``,
            ``DISK_FULL``, ``RELAY_NOT_FOUND``...), or ``None``.
    """

    def __init__(
        self, code: str, message: str, status: int | None = None, service_code: str | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = status
        self.service_code = service_code


def retryable(exc: BaseException) -> bool:
    """Whether ``exc`` is worth another attempt (RELAY_UNREACHABLE)."""
    return isinstance(exc, RelayHttpError) and exc.code == RELAY_UNREACHABLE


async def service_code(response: aiohttp.ClientResponse) -> str | None:
    """The ``error.code`` of a JSON error answer, else ``None`` (the body is not kept)."""
    try:
        body = await response.json(content_type=None)
    except (ValueError, aiohttp.ClientError, TimeoutError):
        return None
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) and code.isascii() and len(code) <= 64 else None


async def refusal(response: aiohttp.ClientResponse, what: str) -> RelayHttpError:
    """The error for an answer that is not a success (401/403 -> RELAY_REFUSED, 404/410
    -> RELAY_GONE, 416 -> RELAY_SHORT, 5xx but 507 and 408/409/423 -> RELAY_UNREACHABLE
    (retried), any other (a 3xx redirect too: never followed) -> RELAY_REFUSED)."""
    status = response.status
    service = await service_code(response)
    if status in (404, 410):
        code = RELAY_GONE
    elif status == 416:
        code = RELAY_SHORT
    elif (status >= 500 and status != 507) or status in (408, 409, 423):
        code = RELAY_UNREACHABLE
    else:
        code = RELAY_REFUSED
    return RelayHttpError(
        code, f"{what} answered {status} {service or ''}".rstrip(), status, service
    )


def cut(what: str, exc: BaseException) -> RelayHttpError:
    """RELAY_UNREACHABLE for a connection error or timeout, naming only its type."""
    return RelayHttpError(RELAY_UNREACHABLE, f"{what}: {type(exc).__name__}")


NETWORK_ERRORS = (aiohttp.ClientError, TimeoutError, ConnectionError)


def check_span(response: aiohttp.ClientResponse, start: int, end: int, what: str) -> None:
    """The answer covers exactly ``[start, end)``: a 206 whose ``Content-Range`` starts at
    ``start`` and ends at ``end - 1``, or a 200 of exactly ``end`` bytes when ``start``
    is 0; RELAY_SHORT when the object ends before ``end``."""
    if response.status == 200:
        if start == 0 and response.content_length == end:
            return
        if start == 0 and response.content_length is not None and response.content_length < end:
            raise RelayHttpError(RELAY_SHORT, f"{what} holds fewer bytes than asked", 200)
        raise RelayHttpError(RELAY_UNREACHABLE, f"{what} ignored the range", 200)
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", ""))
    if match is None or int(match[1]) != start:
        raise RelayHttpError(RELAY_UNREACHABLE, f"{what} answered another range", 206)
    if int(match[2]) != end - 1:
        raise RelayHttpError(RELAY_SHORT, f"{what} holds fewer bytes than asked", 206)


class RelayObject(NamedTuple):
    """A completed relay object.

    Attributes:
        upload_id: its tus upload id (32 lowercase hex digits).
        token: the relay token that reads (and deletes) it: opaque,
            ``[A-Za-z0-9._~-]{1,512}``; a secret, never logged.
        expires: when the object and its token expire, ISO 8601 UTC
            (``YYYY-MM-DDTHH:MM:SSZ``).
        size: its length, bytes.
        sha256: the sha256 of its bytes as the service computed it (lowercase hex).
    """

    upload_id: str
    token: str
    expires: str
    size: int
    sha256: str

    def __repr__(self) -> str:
        return (
            f"RelayObject(upload_id={self.upload_id!r}, token=<hidden>, "
            f"expires={self.expires!r}, size={self.size}, sha256={self.sha256!r})"
        )


def completed(upload_id: str, length: int, response: aiohttp.ClientResponse) -> RelayObject | None:
    """The relay object a tus answer names when the upload is complete (its
    ``Upload-Offset`` is ``length``), else ``None``; RELAY_REFUSED when it names no valid
    token or sha256."""
    found = response.headers
    if found.get("Upload-Offset") != str(length):
        return None
    token = found.get("Upload-Relay-Token", "")
    sha256 = found.get("Upload-Relay-Sha256", "")
    if not TOKEN_PATTERN.fullmatch(token) or not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise RelayHttpError(
            RELAY_REFUSED,
            f"upload {upload_id} completed but is no relay object",
            response.status,
        )
    return RelayObject(upload_id, token, found.get("Upload-Relay-Expires", ""), length, sha256)


class CheckedBody:
    """A PATCH body from the caller's pieces, checked to be exactly ``expected`` bytes
    in all; an error of the caller's (or a wrong length, ValueError) is kept for
    :meth:`reraise` (aiohttp reports it as a connection error)."""

    def __init__(self, pieces: AsyncIterator[bytes], expected: int) -> None:
        self._pieces = pieces
        self._expected = expected
        self.error: Exception | None = None

    async def pieces(self) -> AsyncIterator[bytes]:
        sent = 0
        try:
            async for piece in self._pieces:
                sent += len(piece)
                if sent > self._expected:
                    raise ValueError(f"pieces() yielded more than the {self._expected} bytes left")
                if piece:
                    yield piece
            if sent != self._expected:
                raise ValueError(f"pieces() yielded {sent} bytes, not the {self._expected} left")
        except Exception as exc:
            self.error = exc
            raise

    def reraise(self) -> None:
        """Raise the caller's error, if the pieces failed."""
        if self.error is not None:
            raise self.error
