"""Registration with proof of possession (sans-IO): what a peer signs, what the server checks.

On every WebSocket the server first sends a :class:`~protocol.signaling.Challenge` with a
fresh nonce. A peer that holds a key registers with its raw public key and its Ed25519
signature of :func:`protocol.identity.registration_payload` over that nonce, its peer id,
its role and its public key; the server checks the signature before anything else of the
registration (after the token). The nonce is the socket's own, so a signature seen on one
socket proves nothing on another, and the payload names the peer id and the role, so a
signature for one id proves nothing for another.

A worker always proves a key. A client without a key (no ``public_key`` and no
``signature``) is an anonymous client, admitted only when the server allows anonymous
clients; its peer id is never bound to anything.

Source: PROTOCOL.md section 5.3 (registration with a key, and its test vector);
RFC 8032 (Ed25519).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from protocol.identity import (
    NONCE_BYTES,
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    b64decode,
    b64encode,
    fingerprint,
    new_nonce,
    registration_payload,
    verify,
)
from protocol.signaling import Challenge, Register, Role
from protocol.signaling_errors import SignalingError, SignalingErrorCode

__all__ = ["challenge_nonce", "new_challenge", "signed_register", "verify_register"]


def new_challenge() -> tuple[Challenge, bytes]:
    """A challenge frame with a fresh nonce, and the nonce's raw bytes (32 bytes)."""
    nonce = new_nonce()
    return Challenge(nonce=b64encode(nonce)), nonce


def challenge_nonce(challenge: Challenge) -> bytes:
    """The raw :data:`~protocol.identity.NONCE_BYTES` bytes of a challenge's nonce."""
    return b64decode(challenge.nonce, NONCE_BYTES)


def signed_register(
    challenge: Challenge,
    *,
    peer_id: str,
    role: Role,
    public_key: bytes,
    sign: Callable[[bytes], bytes],
    token: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Register:
    """The ``register`` frame that proves ``public_key`` on the socket of ``challenge``.

    Args:
        challenge: the server's challenge on this socket.
        peer_id, role: what to register.
        public_key: the raw 32-byte Ed25519 public key.
        sign: signs bytes with the matching private key, giving 64 bytes
            (``Identity.sign``).
        token, metadata: as in :class:`~protocol.signaling.Register`.

    Raises:
        pydantic.ValidationError: an invalid peer id, role or metadata, or ``sign``
            returned something that is not 64 bytes.
    """
    payload = registration_payload(challenge_nonce(challenge), peer_id, role, public_key)
    return Register(
        peer_id=peer_id,
        role=role,
        token=token,
        metadata=metadata or {},
        public_key=b64encode(public_key),
        signature=b64encode(sign(payload)),
    )


def verify_register(frame: Register, nonce: bytes, *, allow_anonymous_clients: bool) -> str | None:
    """Check a ``register`` frame's proof against this socket's challenge ``nonce``.

    Returns:
        The fingerprint of the proven key (64 hex digits), or None for an anonymous
        client (admitted only with ``allow_anonymous_clients``).

    Raises:
        SignalingError: ``KEY_REQUIRED`` (no key: a worker, or a client where anonymous
            clients are not allowed); ``BAD_SIGNATURE`` (the signature is not the key's
            signature of the registration payload over ``nonce``).
    """
    if frame.public_key is None or frame.signature is None:
        if frame.role == "worker":
            raise SignalingError(
                SignalingErrorCode.KEY_REQUIRED,
                "a worker registers with public_key and signature",
                frame.type,
            )
        if not allow_anonymous_clients:
            raise SignalingError(
                SignalingErrorCode.KEY_REQUIRED,
                "this server admits no anonymous clients: register with public_key and signature",
                frame.type,
            )
        return None
    public_key = b64decode(frame.public_key, PUBLIC_KEY_BYTES)  # checked when parsed
    signature = b64decode(frame.signature, SIGNATURE_BYTES)
    payload = registration_payload(nonce, frame.peer_id, frame.role, public_key)
    if not verify(public_key, signature, payload):
        raise SignalingError(
            SignalingErrorCode.BAD_SIGNATURE,
            "the signature is not this key's signature of the registration payload over "
            "this socket's challenge nonce",
            frame.type,
        )
    return fingerprint(public_key)
