"""Ed25519 keys and handshake configurations for tests and for fuzzing a peer.

:class:`SeedSigner` is a :class:`~protocol.handshake.Signer` made from a 32-byte seed,
so a test vector or a failing example can be reproduced exactly.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.handshake import AuthConfig
from protocol.identity import fingerprint

__all__ = ["CLIENT_DTLS", "WORKER_DTLS", "SeedSigner", "client_auth", "worker_auth"]

#: The DTLS fingerprints both sides of a simulated channel see in the SDP.
CLIENT_DTLS = "sha-256 " + ":".join(["C1"] * 32)
WORKER_DTLS = "sha-256 " + ":".join(["A5"] * 32)


class SeedSigner:
    """An Ed25519 key made from a 32-byte seed (RFC 8032 section 5.1.5).

    Attributes:
        public_key: the raw 32-byte public key. fingerprint: its sha256, hex.
    """

    def __init__(self, seed: bytes) -> None:
        self._private = Ed25519PrivateKey.from_private_bytes(seed)
        self.public_key = self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.fingerprint = fingerprint(self.public_key)

    @classmethod
    def numbered(cls, number: int) -> SeedSigner:
        """The key whose seed is 32 bytes of ``number`` (0-255)."""
        return cls(bytes([number]) * 32)

    def sign(self, payload: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``payload``."""
        return self._private.sign(payload)


def worker_auth(
    signer: SeedSigner | None = None,
    *,
    allow_anonymous: bool = False,
    authorized: frozenset[str] | None = None,
) -> AuthConfig:
    """A worker's handshake configuration on the simulated channel (key 2 by default)."""
    return AuthConfig(
        signer or SeedSigner.numbered(2),
        offer_dtls=CLIENT_DTLS,
        answer_dtls=WORKER_DTLS,
        allow_anonymous=allow_anonymous,
        authorized=authorized,
    )


def client_auth(signer: SeedSigner | None = None, *, pinned: str | None = None) -> AuthConfig:
    """A client's handshake configuration on the simulated channel (key 1 by default)."""
    return AuthConfig(
        signer or SeedSigner.numbered(1),
        offer_dtls=CLIENT_DTLS,
        answer_dtls=WORKER_DTLS,
        pinned=pinned,
    )
