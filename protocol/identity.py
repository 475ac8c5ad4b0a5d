"""Identities (sans-IO): Ed25519 public keys, their fingerprints, and what is signed.

Every worker and client holds an Ed25519 key pair (RFC 8032); its identity is the
fingerprint of the public key: the sha256 of the 32 raw public-key bytes, as 64
lowercase hexadecimal digits. A fingerprint is also a *principal*: jobs, results,
partial uploads and quotas belong to it. An anonymous client (allowed only when the
operator says so) has no key: each of its connections is its own principal,
``anon-`` and 32 hexadecimal digits.

This module holds the byte strings that are signed, so that every implementation signs
exactly the same bytes:

* :func:`registration_payload`: what a peer signs to register with signaling
  (the server's nonce, the peer id and the role);
* :func:`transcript`: what the worker and the client sign when their data channel opens
  (both DTLS fingerprints from the SDP, both public keys, both nonces).

Each starts with a distinct context string, so a signature made for one purpose is
never valid for another. Fields are length-prefixed (2 bytes, big-endian), so no two
different field lists give the same bytes.

Source: PROTOCOL.md section 5 (identities and the channel handshake); RFC 8032
(Ed25519); SSH's ``known_hosts`` and ``authorized_keys`` for pinning by fingerprint.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "ANONYMOUS_PREFIX",
    "FINGERPRINT_PATTERN",
    "NONCE_BYTES",
    "PUBLIC_KEY_BYTES",
    "SIGNATURE_BYTES",
    "anonymous_principal",
    "b64decode",
    "b64encode",
    "fingerprint",
    "is_anonymous",
    "is_fingerprint",
    "is_weak_public_key",
    "new_nonce",
    "normalise_dtls",
    "registration_payload",
    "sdp_dtls_fingerprint",
    "transcript",
    "verify",
]

#: Bytes of a raw Ed25519 public key (RFC 8032 section 5.1.5).
PUBLIC_KEY_BYTES = 32
#: Bytes of an Ed25519 signature (RFC 8032 section 5.1.6).
SIGNATURE_BYTES = 64
#: Bytes of a fresh nonce (signaling challenge and channel handshake).
NONCE_BYTES = 32
#: A fingerprint: sha256 of the raw public key, 64 lowercase hex digits (``fullmatch``).
FINGERPRINT_PATTERN = re.compile(r"[0-9a-f]{64}")
#: The prefix of an anonymous connection's principal.
ANONYMOUS_PREFIX = "anon-"
_ANONYMOUS_PATTERN = re.compile(r"anon-[0-9a-f]{32}")

_FIELD_PRIME = 2**255 - 19
#: The y-coordinates of the Ed25519 points of small order (1, 2, 4 and 8): 0, 1, p-1 and
#: the two of order 8 (the same list as libsodium's ``ge25519_has_small_order``).
_SMALL_ORDER_Y = frozenset(
    {
        0,
        1,
        _FIELD_PRIME - 1,
        0x05FC536D880238B13933C6D305ACDFD5F098EFF289F4C345B027B2C28F95E826,
        0x7A03AC9277FDC74EC6CC392CFA53202A0F67100D760B3CBA4FD84D3D706A17C7,
    }
)
_REGISTER_CONTEXT = b"rtc-worker/signaling-register/v1"
_TRANSCRIPT_CONTEXT = b"rtc-worker/channel-handshake/v1"


def b64encode(data: bytes) -> str:
    """Standard base64 with padding (RFC 4648 section 4), as text."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str, size: int) -> bytes:
    """Decode standard base64 that must give exactly ``size`` bytes.

    Raises:
        ValueError: not base64, or the wrong length.
    """
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("not base64") from None
    if len(data) != size:
        raise ValueError(f"expected {size} bytes, got {len(data)}")
    return data


def fingerprint(public_key: bytes) -> str:
    """The identity of a raw 32-byte Ed25519 public key: its sha256, 64 hex digits.

    Raises:
        ValueError: ``public_key`` is not 32 bytes.
    """
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes")
    return hashlib.sha256(public_key).hexdigest()


def is_fingerprint(text: str) -> bool:
    """True when ``text`` is a fingerprint (64 lowercase hex digits)."""
    return FINGERPRINT_PATTERN.fullmatch(text) is not None


def anonymous_principal() -> str:
    """A fresh principal for one anonymous connection: ``anon-`` and 32 hex digits."""
    return ANONYMOUS_PREFIX + secrets.token_hex(16)


def is_anonymous(principal: str) -> bool:
    """True for an anonymous connection's principal: ``anon-`` and 32 hex digits."""
    return _ANONYMOUS_PATTERN.fullmatch(principal) is not None


def new_nonce() -> bytes:
    """:data:`NONCE_BYTES` random bytes from the operating system's CSPRNG."""
    return secrets.token_bytes(NONCE_BYTES)


def _fields(*fields: bytes) -> bytes:
    out = bytearray()
    for field in fields:
        if len(field) > 0xFFFF:
            raise ValueError("a signed field is at most 65535 bytes")
        out += len(field).to_bytes(2, "big") + field
    return bytes(out)


def registration_payload(nonce: bytes, peer_id: str, role: str, public_key: bytes) -> bytes:
    """The bytes a peer signs to register ``peer_id`` with signaling.

    Args:
        nonce: the server's challenge nonce (:data:`NONCE_BYTES` bytes).
        peer_id: the id being registered. role: ``"worker"`` or ``"client"``.
        public_key: the registering key, raw 32 bytes.

    Returns:
        ``context || len-prefixed(nonce, peer_id, role, public_key)``.
    """
    return _REGISTER_CONTEXT + _fields(
        nonce, peer_id.encode("utf-8"), role.encode("utf-8"), public_key
    )


def transcript(
    *,
    offer_dtls: str,
    answer_dtls: str,
    client_key: bytes,
    worker_key: bytes,
    client_nonce: bytes,
    worker_nonce: bytes,
) -> bytes:
    """The channel handshake's transcript, signed by both sides with a role label.

    Args:
        offer_dtls / answer_dtls: the DTLS certificate fingerprints of the offer (the
            client) and the answer (the worker), as in the SDP's ``a=fingerprint``
            value (e.g. ``sha-256 AB:CD:...``), normalised by :func:`normalise_dtls`.
        client_key / worker_key: raw 32-byte public keys.
        client_nonce / worker_nonce: each side's fresh nonce.

    Returns:
        ``context || len-prefixed(offer_dtls, answer_dtls, client_key, worker_key,
        client_nonce, worker_nonce)``. The worker signs ``b"worker" || transcript`` and
        the client ``b"client" || transcript``.
    """
    return _TRANSCRIPT_CONTEXT + _fields(
        normalise_dtls(offer_dtls).encode("ascii"),
        normalise_dtls(answer_dtls).encode("ascii"),
        client_key,
        worker_key,
        client_nonce,
        worker_nonce,
    )


def normalise_dtls(value: str) -> str:
    """An SDP ``a=fingerprint`` value in one form: ``sha-256 AB:CD:...`` (algorithm in
    lower case, hex in upper case, one space).

    Raises:
        ValueError: not ``<algorithm> <hex pairs>``, or not ASCII.
    """
    parts = value.strip().split()
    if len(parts) != 2 or not value.isascii():
        raise ValueError("a DTLS fingerprint is '<algorithm> <AB:CD:...>'")
    return f"{parts[0].lower()} {parts[1].upper()}"


def sdp_dtls_fingerprint(sdp: str) -> str:
    """The sha-256 DTLS certificate fingerprint an SDP declares (``a=fingerprint``),
    normalised by :func:`normalise_dtls`.

    Raises:
        ValueError: the SDP declares no sha-256 fingerprint, or two different ones.

    Source: RFC 8122 section 5 (the ``fingerprint`` attribute).
    """
    found: set[str] = set()
    for line in sdp.splitlines():
        if line.startswith("a=fingerprint:"):
            value = normalise_dtls(line[len("a=fingerprint:") :])
            if value.startswith("sha-256 "):
                found.add(value)
    if len(found) != 1:
        raise ValueError(f"expected one sha-256 DTLS fingerprint in the SDP, found {len(found)}")
    return found.pop()


def is_weak_public_key(public_key: bytes) -> bool:
    """True for a key nobody holds alone: a non-canonical encoding (y >= p) or a point of
    small order, for which signatures can be forged without any private key (an all-zero
    key and an all-zero signature verify for some payloads).

    Source: RFC 8032 section 5.1.3 (decoding); libsodium's small-order blocklist.
    """
    if len(public_key) != PUBLIC_KEY_BYTES:
        return True
    y = int.from_bytes(public_key, "little") & ((1 << 255) - 1)
    return y >= _FIELD_PRIME or y in _SMALL_ORDER_Y


def verify(public_key: bytes, signature: bytes, payload: bytes) -> bool:
    """True when ``signature`` is ``public_key``'s Ed25519 signature of ``payload`` and
    the key is not weak (:func:`is_weak_public_key`).

    Never raises for a bad key or signature: those are just not valid.
    """
    if is_weak_public_key(public_key):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, payload)
    except (InvalidSignature, ValueError):
        return False
    return True
