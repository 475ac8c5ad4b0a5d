"""The channel handshake's frames: one frozen, slotted, typed class per frame (sans-IO).

Right after the data channel opens, before any job or transfer frame::

    C->W  AUTH_HELLO::{client_public_key}::{client_nonce}
    W->C  AUTH_CHALLENGE::{worker_public_key}::{worker_nonce}::{worker_signature}
    C->W  AUTH_RESPONSE::{client_signature}
    W->C  AUTH_OK::{client_fingerprint}

Keys (32 bytes), nonces (32 bytes) and signatures (64 bytes) travel as standard base64
with padding (RFC 4648 section 4), which never contains ``::``. What is signed is
:func:`protocol.identity.transcript` with a role label; :mod:`protocol.handshake`
decides.

Source: PROTOCOL.md section 5; RFC 8032 (Ed25519).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from protocol.errors import ErrorCode
from protocol.identity import (
    NONCE_BYTES,
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    is_fingerprint,
)
from protocol.messages import Message, invalid

__all__ = ["AUTH_TYPES", "AuthChallenge", "AuthHello", "AuthOk", "AuthResponse"]


def _check_bytes(name: str, value: bytes, size: int) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise invalid(ErrorCode.MALFORMED_FRAME, f"{name} must be {size} bytes (base64)")


@dataclass(frozen=True, slots=True)
class AuthHello(Message):
    """C->W ``AUTH_HELLO::{public_key}::{nonce}``: the client's key and fresh nonce."""

    TYPE: ClassVar[str] = "AUTH_HELLO"
    public_key: bytes
    nonce: bytes

    def __post_init__(self) -> None:
        _check_bytes("public_key", self.public_key, PUBLIC_KEY_BYTES)
        _check_bytes("nonce", self.nonce, NONCE_BYTES)


@dataclass(frozen=True, slots=True)
class AuthChallenge(Message):
    """W->C ``AUTH_CHALLENGE::{public_key}::{nonce}::{signature}``: the worker's key, its
    fresh nonce, and its signature of ``b"worker" || transcript``."""

    TYPE: ClassVar[str] = "AUTH_CHALLENGE"
    public_key: bytes
    nonce: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_bytes("public_key", self.public_key, PUBLIC_KEY_BYTES)
        _check_bytes("nonce", self.nonce, NONCE_BYTES)
        _check_bytes("signature", self.signature, SIGNATURE_BYTES)


@dataclass(frozen=True, slots=True)
class AuthResponse(Message):
    """C->W ``AUTH_RESPONSE::{signature}``: the client's signature of
    ``b"client" || transcript``."""

    TYPE: ClassVar[str] = "AUTH_RESPONSE"
    signature: bytes

    def __post_init__(self) -> None:
        _check_bytes("signature", self.signature, SIGNATURE_BYTES)


@dataclass(frozen=True, slots=True)
class AuthOk(Message):
    """W->C ``AUTH_OK::{fingerprint}``: the worker accepted the client, whose identity
    (the fingerprint of its key) it states."""

    TYPE: ClassVar[str] = "AUTH_OK"
    fingerprint: str

    def __post_init__(self) -> None:
        if not isinstance(self.fingerprint, str) or not is_fingerprint(self.fingerprint):
            raise invalid(ErrorCode.MALFORMED_FRAME, "fingerprint must be 64 lowercase hex digits")


#: The handshake's message classes, in the order they are sent.
AUTH_TYPES: tuple[type[Message], ...] = (AuthHello, AuthChallenge, AuthResponse, AuthOk)
