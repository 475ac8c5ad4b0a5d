"""Download capabilities: expiring tokens, signed by the server, for one stored result.

An upload's answer carries a token that lets whoever holds it download (or delete) that
one result, without any key: the worker hands it to the owner in RESULTS_STORED. It
binds the owner, the job id, the sha256 of the content and an expiry; a token for
another job, for replaced content, past its expiry or with one bit changed is refused.

Wire form: base64url without padding (RFC 4648 section 5; only ``A-Z a-z 0-9 - _``,
so never ``::``) of::

    version (1 byte, 1) | expires_at (8 bytes, big-endian Unix seconds)
    | sha256 (32 bytes) | len(owner) (1 byte) | owner (ASCII)
    | len(job_id) (1 byte) | job_id (ASCII) | tag (32 bytes)

where ``tag = HMAC-SHA256(secret, CONTEXT || everything before the tag)`` (RFC 2104),
``CONTEXT`` = :data:`TOKEN_CONTEXT`. The secret is 32 random bytes kept in the storage
folder (:data:`SECRET_FILE_NAME`, mode 0600), created on first start; removing it (and
restarting) revokes every token issued.

Relay tokens (:func:`issue_relay`, :func:`verify_relay`) read one relay object
(:mod:`signaling.relay_routes`) with the same secret under another context
(:data:`RELAY_CONTEXT`, so neither kind of token is ever taken for the other)::

    version (1 byte, 1) | expires_at (8 bytes, big-endian Unix seconds)
    | sha256 (32 bytes) | size (8 bytes, big-endian) | upload_id (16 bytes) | tag (32 bytes)

base64url without padding (concise: 130 characters, within ``[A-Za-z0-9._~-]``).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hmac
import os
import secrets
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from rtc_worker.storage import write_atomic

__all__ = [
    "MAX_TOKEN_CHARS",
    "RELAY_CONTEXT",
    "SECRET_BYTES",
    "SECRET_FILE_NAME",
    "TOKEN_CONTEXT",
    "Capability",
    "CapabilityError",
    "CapabilityProblem",
    "RelayCapability",
    "issue",
    "issue_relay",
    "load_or_create_secret",
    "verify",
    "verify_relay",
]

TOKEN_CONTEXT = b"rtc-worker/download-capability/v1"
"""Prefixed to what the tag covers, so the secret's MACs mean nothing elsewhere."""
RELAY_CONTEXT = b"rtc-worker/relay-capability/v1"
"""Prefixed to what a relay token's tag covers (never a download token's context)."""
SECRET_BYTES = 32
"""Length of the server secret, bytes."""
SECRET_FILE_NAME = "capability.key"
"""The secret's file in the storage folder (0600)."""
MAX_TOKEN_CHARS = 1024
"""Longest token text looked at; longer is refused before decoding."""

_VERSION = 1
_TAG_BYTES = 32
_HEAD = struct.Struct(">BQ32s")
_RELAY = struct.Struct(">BQ32sQ16s")
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Capability:
    """What a token grants: download ``job_id`` of ``owner`` while its content has
    ``sha256`` and until ``expires_at`` (Unix seconds)."""

    owner: str
    job_id: str
    sha256: str
    expires_at: int


class CapabilityProblem(enum.StrEnum):
    """Why a token was refused."""

    INVALID = "TOKEN_INVALID"
    """Malformed, or not signed by this server's secret."""
    EXPIRED = "TOKEN_EXPIRED"
    """Signed by this server, past its expiry."""


class CapabilityError(Exception):
    """A token was refused; :attr:`problem` says why."""

    def __init__(self, problem: CapabilityProblem, message: str) -> None:
        super().__init__(message)
        self.problem = problem


def _tag(secret: bytes, body: bytes, context: bytes = TOKEN_CONTEXT) -> bytes:
    return hmac.digest(secret, context + body, "sha256")


def _signed_body(
    secret: bytes,
    context: bytes,
    token: str,
    invalid: CapabilityError,
    fits: Callable[[int], bool],
) -> bytes:
    """The body of ``token`` (base64url without padding of body || tag) once its tag is
    ``context``'s HMAC-SHA256 under ``secret`` and ``fits(len(body))``; raises
    ``invalid`` otherwise (the one decoder of both kinds of token)."""
    if not token or len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise invalid
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise invalid from None
    body, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
    if not fits(len(body)):  # (a token shorter than a tag has an empty body)
        raise invalid
    if not hmac.compare_digest(tag, _tag(secret, body, context)):
        raise invalid
    return body


def _short(text: str, what: str) -> bytes:
    data = text.encode("ascii")
    if not 1 <= len(data) <= 255:
        raise ValueError(f"{what} must be 1..255 ASCII characters")
    return bytes([len(data)]) + data


def issue(secret: bytes, capability: Capability) -> str:
    """The token of ``capability``, signed with ``secret``.

    Raises:
        ValueError: owner or job id not ASCII or longer than 255, or a bad sha256.
    """
    body = (
        _HEAD.pack(_VERSION, capability.expires_at, bytes.fromhex(capability.sha256))
        + _short(capability.owner, "owner")
        + _short(capability.job_id, "job_id")
    )
    raw = body + _tag(secret, body)
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _field(raw: bytes, at: int) -> tuple[str, int]:
    if at >= len(raw):
        raise ValueError("truncated")
    end = at + 1 + raw[at]
    if raw[at] == 0 or end > len(raw):
        raise ValueError("truncated")
    return raw[at + 1 : end].decode("ascii"), end


def verify(secret: bytes, token: str, now: float) -> Capability:
    """Check ``token``'s signature and expiry.

    Args:
        secret: the server secret.
        token: the token text.
        now: the current Unix time, seconds.

    Returns:
        What the token grants (the caller still checks the job id and the content).

    Raises:
        CapabilityError: INVALID (malformed or forged), EXPIRED (past ``expires_at``).
    """
    invalid = CapabilityError(CapabilityProblem.INVALID, "the download token is not valid")
    body = _signed_body(secret, TOKEN_CONTEXT, token, invalid, lambda n: n >= _HEAD.size + 2)
    try:
        version, expires_at, digest = _HEAD.unpack_from(body)
        owner, at = _field(body, _HEAD.size)
        job_id, at = _field(body, at)
    except (ValueError, struct.error, UnicodeDecodeError):
        raise invalid from None
    if version != _VERSION or at != len(body):
        raise invalid
    if now >= expires_at:
        raise CapabilityError(CapabilityProblem.EXPIRED, "the download token has expired")
    return Capability(owner=owner, job_id=job_id, sha256=digest.hex(), expires_at=expires_at)


@dataclass(frozen=True, slots=True)
class RelayCapability:
    """What a relay token grants: read (and delete) the relay object ``upload_id`` (32
    hex) while it holds ``size`` bytes of ``sha256`` and until ``expires_at`` (Unix
    seconds)."""

    upload_id: str
    sha256: str
    size: int
    expires_at: int


def issue_relay(secret: bytes, capability: RelayCapability) -> str:
    """The relay token of ``capability``, signed with ``secret``.

    Raises:
        ValueError: an upload id that is not 32 hex digits or a bad sha256.
    """
    body = _RELAY.pack(
        _VERSION,
        capability.expires_at,
        bytes.fromhex(capability.sha256),
        capability.size,
        bytes.fromhex(capability.upload_id),
    )
    if len(capability.upload_id) != 32 or len(capability.sha256) != 64:
        raise ValueError("a relay capability needs a 32-hex upload id and a sha256")
    raw = body + _tag(secret, body, RELAY_CONTEXT)
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def verify_relay(secret: bytes, token: str, now: float) -> RelayCapability:
    """Check a relay token's signature and expiry.

    Args:
        secret: the server secret.
        token: the token text (``X-Relay-Token``).
        now: the current Unix time, seconds.

    Returns:
        What the token grants (the caller still checks the upload id and the object).

    Raises:
        CapabilityError: INVALID (malformed or forged), EXPIRED (past ``expires_at``).
    """
    invalid = CapabilityError(CapabilityProblem.INVALID, "the relay token is not valid")
    body = _signed_body(secret, RELAY_CONTEXT, token, invalid, lambda n: n == _RELAY.size)
    version, expires_at, digest, size, upload_id = _RELAY.unpack(body)
    if version != _VERSION:
        raise invalid
    if now >= expires_at:
        raise CapabilityError(CapabilityProblem.EXPIRED, "the relay token has expired")
    return RelayCapability(upload_id.hex(), digest.hex(), size, expires_at)


def load_or_create_secret(folder: Path) -> bytes:
    """The server secret in ``folder`` (blocking): read it, or create it (0600, atomic,
    never replacing one another process created meanwhile).

    A secret file readable by group or others is made 0600 (with a warning).

    Raises:
        OSError: the folder or the file cannot be opened, read or written.
        ValueError: the file is not a regular file of :data:`SECRET_BYTES` bytes.
    """
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for _ in range(2):
            try:
                fd = os.open(SECRET_FILE_NAME, _READ_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError:
                try:
                    secret = secrets.token_bytes(SECRET_BYTES)
                    write_atomic(dir_fd, SECRET_FILE_NAME, secret, replace=False, mode=0o600)
                    logger.info("created the download-token secret {}", SECRET_FILE_NAME)
                    return secret
                except FileExistsError:  # another process was first: read its secret
                    continue
            try:
                return _read_secret(fd)
            finally:
                os.close(fd)
    finally:
        os.close(dir_fd)
    raise OSError(f"cannot read or create {SECRET_FILE_NAME}")


def _read_secret(fd: int) -> bytes:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != SECRET_BYTES:
        raise ValueError(f"{SECRET_FILE_NAME} is not a file of {SECRET_BYTES} bytes")
    if st.st_mode & 0o077:
        logger.warning("{} was readable by others; made it 0600", SECRET_FILE_NAME)
        os.fchmod(fd, 0o600)
    secret = os.pread(fd, SECRET_BYTES + 1, 0)
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"{SECRET_FILE_NAME} is not a file of {SECRET_BYTES} bytes")
    return secret
