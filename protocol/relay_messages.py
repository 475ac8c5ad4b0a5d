"""The relay road's frames: RELAY_PART, RELAY_STOP and RELAY_ENDED (sans-IO).

Inside an open transfer, after FILE_READY, the sender may move the file's bytes through
the storage service instead of the data channel (PROTOCOL.md section 2.6):

* ``RELAY_PART::{sha256}::{offset}::{length}::{chunk_size}::{key}::{nonce_prefix}::``
  ``{upload_id}::{token}`` sender -> receiver: plaintext ``[offset, offset+length)`` is
  in relay object ``upload_id``, sealed with :mod:`protocol.relay_crypto`, readable with ``token``.
* ``RELAY_STOP::{sha256}`` sender -> receiver: no more parts; stop fetching now.
* ``RELAY_ENDED::{sha256}::{offset}::{code}::{detail}`` receiver -> sender: the relay
  road ended with ``offset`` bytes verified on disk; the transfer stays open there.

The frame names an upload id, never a URL: the receiver fetches only from its own
storage service. ``key`` and ``token`` are secrets: :class:`RelayPart`'s repr and
:func:`redact` hide them, and nothing of this module logs.

Source: PROTOCOL.md section 2.6.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from protocol.errors import ErrorCode, RemoteProtocolError
from protocol.limits import RELAY_MAX_CHUNK_BYTES, RELAY_MIN_CHUNK_BYTES, Limits
from protocol.messages import (
    CODE_PATTERN,
    SEP,
    Message,
    check_count,
    check_sha256,
    check_text,
    invalid,
)
from protocol.relay_crypto import KEY_BYTES, NONCE_PREFIX_BYTES, RelaySecret

__all__ = [
    "RELAY_PARSERS",
    "RELAY_TYPES",
    "TOKEN_PATTERN",
    "UPLOAD_ID_PATTERN",
    "RelayEnded",
    "RelayPart",
    "RelayStop",
    "b64url_decode",
    "b64url_encode",
    "encode_relay",
    "redact",
]

#: A relay object's id: the storage service's tus upload id, 32 lowercase hex digits.
UPLOAD_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
#: A relay token (an opaque capability): ``[A-Za-z0-9._~-]{1,512}`` (``fullmatch``).
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~-]{1,512}")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_COUNT = re.compile(r"[0-9]{1,18}")
_HIDDEN = "<hidden>"


def b64url_encode(data: bytes) -> str:
    """base64url without padding (RFC 4648 section 5), as text."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, size: int) -> bytes:
    """Decode canonical base64url without padding that must give exactly ``size`` bytes.

    Raises:
        ValueError: not canonical base64url without padding, or the wrong length.
    """
    if not _B64URL.fullmatch(text):
        raise ValueError("not base64url without padding")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url without padding") from None
    if len(data) != size or b64url_encode(data) != text:
        raise ValueError(f"expected {size} bytes of canonical base64url")
    return data


@dataclass(frozen=True, slots=True, repr=False)
class RelayPart(Message):
    """Sender->receiver: plaintext ``[offset, offset+length)`` is in relay object
    ``upload_id``, as sealed chunks of ``chunk_size`` bytes (:mod:`protocol.relay_crypto`).

    Attributes:
        sha256: the transfer's file (as in its FILE_META).
        offset: first plaintext byte, a multiple of ``chunk_size``.
        length: plaintext bytes (> 0); a multiple of ``chunk_size`` unless the part ends
            the file (the receiver checks that against the size).
        chunk_size: plaintext bytes per chunk, 4 KiB to 16 MiB, the same for every part
            of a transfer.
        key / nonce_prefix: the file's :class:`RelaySecret` (32 and 7 bytes; base64url
            without padding on the wire). Secret: hidden in the repr.
        upload_id: the relay object's tus upload id (32 lowercase hex digits).
        token: the relay token that reads it, ``[A-Za-z0-9._~-]{1,512}``. Secret.

    Raises:
        LocalProtocolError: MALFORMED_FRAME for a field outside its grammar.
    """

    TYPE: ClassVar[str] = "RELAY_PART"
    sha256: str
    offset: int
    length: int
    chunk_size: int
    key: bytes = field(repr=False)
    nonce_prefix: bytes = field(repr=False)
    upload_id: str
    token: str = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", check_sha256(self.sha256))
        check_count("offset", self.offset)
        check_count("length", self.length, minimum=1)
        check_count("chunk_size", self.chunk_size, minimum=RELAY_MIN_CHUNK_BYTES)
        if self.chunk_size > RELAY_MAX_CHUNK_BYTES:
            raise invalid(
                ErrorCode.MALFORMED_FRAME,
                f"chunk_size is {RELAY_MIN_CHUNK_BYTES} to {RELAY_MAX_CHUNK_BYTES} bytes",
            )
        if self.offset % self.chunk_size or self.offset + self.length >= 10**18:
            raise invalid(ErrorCode.MALFORMED_FRAME, "offset is a multiple of chunk_size")
        try:
            RelaySecret(self.key, self.nonce_prefix)
        except ValueError as exc:
            raise invalid(ErrorCode.MALFORMED_FRAME, str(exc)) from None
        if not isinstance(self.upload_id, str) or not UPLOAD_ID_PATTERN.fullmatch(self.upload_id):
            raise invalid(ErrorCode.MALFORMED_FRAME, "upload_id is 32 lowercase hex digits")
        if not isinstance(self.token, str) or not TOKEN_PATTERN.fullmatch(self.token):
            raise invalid(ErrorCode.MALFORMED_FRAME, "token must match [A-Za-z0-9._~-]{1,512}")

    @classmethod
    def of(
        cls,
        sha256: str,
        offset: int,
        length: int,
        chunk_size: int,
        secret: RelaySecret,
        upload_id: str,
        token: str,
    ) -> RelayPart:
        """The part for a :class:`RelaySecret` (the sender's usual way to build one)."""
        return cls(
            sha256, offset, length, chunk_size, secret.key, secret.nonce_prefix, upload_id, token
        )

    @property
    def end(self) -> int:
        """``offset + length``: the plaintext byte after the part."""
        return self.offset + self.length

    @property
    def secret(self) -> RelaySecret:
        """The file's :class:`RelaySecret`."""
        return RelaySecret(self.key, self.nonce_prefix)

    def __repr__(self) -> str:
        return (
            f"RelayPart(sha256={self.sha256}, offset={self.offset}, length={self.length}, "
            f"chunk_size={self.chunk_size}, key={_HIDDEN}, nonce_prefix={_HIDDEN}, "
            f"upload_id={self.upload_id}, token={_HIDDEN})"
        )


@dataclass(frozen=True, slots=True)
class RelayStop(Message):
    """Sender->receiver ``RELAY_STOP::{sha256}``: no more parts; stop fetching now (the
    receiver answers RELAY_ENDED STOPPED at its verified offset)."""

    TYPE: ClassVar[str] = "RELAY_STOP"
    sha256: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", check_sha256(self.sha256))


@dataclass(frozen=True, slots=True)
class RelayEnded(Message):
    """Receiver->sender ``RELAY_ENDED::{sha256}::{offset}::{code}::{detail}``.

    The relay road ended for the transfer of ``sha256`` with ``offset`` plaintext bytes
    verified and on disk; the transfer stays open there. ``code`` is a
    :class:`~protocol.errors.RelayEndCode` value when we send it (any
    ``[A-Z][A-Z0-9_]{0,63}`` is accepted from a peer); ``detail`` is one line of text
    and may contain ``::``.
    """

    TYPE: ClassVar[str] = "RELAY_ENDED"
    sha256: str
    offset: int
    code: str
    detail: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", check_sha256(self.sha256))
        check_count("offset", self.offset)
        if not isinstance(self.code, str) or not CODE_PATTERN.fullmatch(self.code):
            raise invalid(ErrorCode.MALFORMED_FRAME, "code must match [A-Z][A-Z0-9_]{0,63}")
        object.__setattr__(self, "code", str(self.code))
        check_text("detail", self.detail, one_line=True)


#: The relay frames' classes, in the order of PROTOCOL.md section 2.6.
RELAY_TYPES: tuple[type[Message], ...] = (RelayPart, RelayStop, RelayEnded)


def encode_relay(message: RelayPart | RelayStop | RelayEnded) -> str:
    """The text frame of a relay message (secrets included: for the channel only)."""
    if isinstance(message, RelayPart):
        return SEP.join(
            (
                message.TYPE,
                message.sha256,
                str(message.offset),
                str(message.length),
                str(message.chunk_size),
                b64url_encode(message.key),
                b64url_encode(message.nonce_prefix),
                message.upload_id,
                message.token,
            )
        )
    if isinstance(message, RelayStop):
        return f"{message.TYPE}{SEP}{message.sha256}"
    return SEP.join(
        (message.TYPE, message.sha256, str(message.offset), message.code, message.detail)
    )


def redact(frame: str | bytes) -> str | bytes:
    """``frame`` safe for a log or ``--trace`` line: a RELAY_PART keeps its first four
    fields, ``RELAY_PART::{sha256}::{offset}::{length}::...<hidden>``; any other frame is
    returned as it is."""
    if isinstance(frame, str) and frame.startswith(RelayPart.TYPE + SEP):
        head = frame.split(SEP, 4)[:4]
        return SEP.join(head) + SEP + "..." + _HIDDEN
    return frame


def _fields(rest: str | None, type_: str, count: int) -> list[str]:
    fields = [] if rest is None else rest.split(SEP, count - 1)
    if len(fields) != count:
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, f"{type_} needs {count} fields")
    return fields


def _count(text: str, name: str) -> int:
    if not _COUNT.fullmatch(text):
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, f"{name} must be decimal digits")
    return int(text)


def _parse_part(rest: str | None, limits: Limits) -> Message:
    fields = _fields(rest, RelayPart.TYPE, 8)
    sha, offset, length, chunk_size, key, prefix, upload_id, token = fields
    try:
        secret = (b64url_decode(key, KEY_BYTES), b64url_decode(prefix, NONCE_PREFIX_BYTES))
    except ValueError as exc:
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, f"RELAY_PART: {exc}") from None
    return RelayPart(
        sha,
        _count(offset, "offset"),
        _count(length, "length"),
        _count(chunk_size, "chunk_size"),
        *secret,
        upload_id,
        token,
    )


def _parse_stop(rest: str | None, limits: Limits) -> Message:
    (sha,) = _fields(rest, RelayStop.TYPE, 1)
    return RelayStop(sha)


def _parse_ended(rest: str | None, limits: Limits) -> Message:
    sha, offset, code, detail = _fields(rest, RelayEnded.TYPE, 4)
    return RelayEnded(sha, _count(offset, "offset"), code, detail)


#: Frame type -> parser of the fields after the type, for :func:`protocol.codec.decode`
#: (which turns a LocalProtocolError of a class into the RemoteProtocolError).
RELAY_PARSERS: dict[str, Callable[[str | None, Limits], Message]] = {
    RelayPart.TYPE: _parse_part,
    RelayStop.TYPE: _parse_stop,
    RelayEnded.TYPE: _parse_ended,
}
