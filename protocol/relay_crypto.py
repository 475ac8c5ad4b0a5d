"""The relay road's encryption: AES-256-GCM per chunk in the STREAM construction (sans-IO).

The storage service that carries a relay object sees only ciphertext. The sender makes
one fresh :class:`RelaySecret` per file per relay session and gives it to the receiver
over the authenticated data channel (RELAY_PART). The plaintext is cut in chunks of
``chunk_size`` bytes (the last may be shorter; an empty file has no chunk and never takes
the relay road); chunk *i* covers plaintext ``[i*chunk_size, min((i+1)*chunk_size, size))``
and is sealed on its own::

    nonce(i) = nonce_prefix (7 bytes) || i (4 bytes, big-endian) || last (1 byte: 1 for
               the chunk that ends the file, else 0)
    aad      = b"rtc-relay/1" || sha256 of the file (32 bytes) || size (8 bytes, big-endian)
               || chunk_size (4 bytes, big-endian)
    chunk    = AESGCM(key).encrypt(nonce(i), plaintext chunk, aad)   # len(plain) + 16 bytes

Each chunk's position and the end of the file are authenticated, so chunks cannot be
reordered, dropped, swapped between files or the file truncated: opening such a chunk
fails like a tampered one (RELAY_CHUNK_INVALID).

Source: PROTOCOL.md section 2.6; STREAM (Hoang, Reyhanitabar, Rogaway, Vizár, "Online
Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance", CRYPTO 2015), as in
Tink's streaming AEAD; AES-GCM from ``cryptography`` (NIST SP 800-38D).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError, TransferErrorCode
from protocol.limits import MAX_RELAY_CHUNKS, RELAY_MAX_CHUNK_BYTES, RELAY_MIN_CHUNK_BYTES
from protocol.messages import check_sha256

__all__ = [
    "AAD_LABEL",
    "KEY_BYTES",
    "NONCE_PREFIX_BYTES",
    "TAG_BYTES",
    "ChunkCipher",
    "RelaySecret",
]

#: Bytes of an AES-256 key.
KEY_BYTES = 32
#: Bytes of the random nonce prefix (12-byte GCM nonce = prefix + 4-byte index + flag).
NONCE_PREFIX_BYTES = 7
#: Bytes of the GCM tag each sealed chunk carries.
TAG_BYTES = 16
#: The label the associated data starts with (the construction's version).
AAD_LABEL = b"rtc-relay/1"


@dataclass(frozen=True, slots=True)
class RelaySecret:
    """One file's relay-road secret: a 32-byte AES-256 key and a 7-byte nonce prefix.

    Its repr hides both (a secret never reaches a log line or a traceback).

    Raises:
        ValueError: a field is not bytes of its length.
    """

    key: bytes = field(repr=False)
    nonce_prefix: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes) or len(self.key) != KEY_BYTES:
            raise ValueError(f"a relay key is {KEY_BYTES} bytes")
        if not isinstance(self.nonce_prefix, bytes) or len(self.nonce_prefix) != NONCE_PREFIX_BYTES:
            raise ValueError(f"a relay nonce prefix is {NONCE_PREFIX_BYTES} bytes")

    @classmethod
    def generate(cls) -> RelaySecret:
        """A fresh secret from the operating system's CSPRNG (:func:`secrets.token_bytes`)."""
        return cls(secrets.token_bytes(KEY_BYTES), secrets.token_bytes(NONCE_PREFIX_BYTES))

    def __repr__(self) -> str:
        return "RelaySecret(<hidden>)"


class ChunkCipher:
    """Seals and opens the relay-road chunks of one file.

    Args:
        secret: the file's :class:`RelaySecret`.
        sha256: the plaintext's sha256 (64 hexadecimal digits).
        size: the plaintext's size, bytes (>= 1).
        chunk_size: plaintext bytes per chunk, ``RELAY_MIN_CHUNK_BYTES`` (4 KiB) to
            ``RELAY_MAX_CHUNK_BYTES`` (16 MiB).

    Raises:
        LocalProtocolError: MALFORMED_FRAME for a bad sha256, an empty file, a chunk_size
            out of bounds, or more than ``MAX_RELAY_CHUNKS`` (2**32) chunks.
    """

    __slots__ = ("_aad", "_aead", "_prefix", "chunk_count", "chunk_size", "sha256", "size")

    def __init__(self, secret: RelaySecret, sha256: str, size: int, chunk_size: int) -> None:
        self.sha256 = check_sha256(sha256)
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size < 10**18:
            raise LocalProtocolError(ErrorCode.MALFORMED_FRAME, "an empty file has no relay chunk")
        if (
            isinstance(chunk_size, bool)
            or not isinstance(chunk_size, int)
            or not RELAY_MIN_CHUNK_BYTES <= chunk_size <= RELAY_MAX_CHUNK_BYTES
        ):
            raise LocalProtocolError(
                ErrorCode.MALFORMED_FRAME,
                f"a relay chunk_size is {RELAY_MIN_CHUNK_BYTES} to {RELAY_MAX_CHUNK_BYTES} bytes",
            )
        self.size = size
        self.chunk_size = chunk_size
        #: Chunks of the file: ``ceil(size / chunk_size)``.
        self.chunk_count = -(-size // chunk_size)
        if self.chunk_count > MAX_RELAY_CHUNKS:
            raise LocalProtocolError(
                ErrorCode.MALFORMED_FRAME, f"a file has at most {MAX_RELAY_CHUNKS} relay chunks"
            )
        self._aead = AESGCM(secret.key)
        self._prefix = secret.nonce_prefix
        self._aad = (
            AAD_LABEL
            + bytes.fromhex(self.sha256)
            + size.to_bytes(8, "big")
            + chunk_size.to_bytes(4, "big")
        )

    def __repr__(self) -> str:
        return f"ChunkCipher(sha256={self.sha256}, size={self.size}, chunk_size={self.chunk_size})"

    def _check(self, index: int) -> None:
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError("a chunk index is an integer")
        if not 0 <= index < self.chunk_count:
            raise ValueError(f"chunk {index} is not in [0, {self.chunk_count})")

    def plain_length(self, index: int) -> int:
        """Plaintext bytes of chunk ``index`` (``chunk_size``, less for the last).

        Raises:
            ValueError: ``index`` is not in ``[0, chunk_count)``.
        """
        self._check(index)
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def cipher_length(self, index: int) -> int:
        """Ciphertext bytes of chunk ``index``: its plaintext bytes + ``TAG_BYTES``.

        Raises:
            ValueError: ``index`` is not in ``[0, chunk_count)``.
        """
        return self.plain_length(index) + TAG_BYTES

    def cipher_span(self, first_index: int, start_index: int, end_index: int) -> tuple[int, int]:
        """The byte range ``[start_byte, end_byte)`` of chunks ``[start_index, end_index)``
        inside a relay object whose first chunk is ``first_index`` (the object holds
        consecutive sealed chunks from there). For an HTTP ``Range: bytes=start-(end-1)``.

        Raises:
            ValueError: not ``0 <= first_index <= start_index <= end_index <= chunk_count``.
        """
        if not 0 <= first_index <= start_index <= end_index <= self.chunk_count:
            raise ValueError("need 0 <= first_index <= start_index <= end_index <= chunk_count")
        return self._cipher_offset(first_index, start_index), self._cipher_offset(
            first_index, end_index
        )

    def _cipher_offset(self, first_index: int, index: int) -> int:
        offset = (index - first_index) * (self.chunk_size + TAG_BYTES)
        if index == self.chunk_count and index > first_index:
            offset -= self.chunk_size - self.plain_length(index - 1)
        return offset

    def nonce(self, index: int) -> bytes:
        """The 12-byte GCM nonce of chunk ``index`` (prefix, index, last-chunk flag).

        Raises:
            ValueError: ``index`` is not in ``[0, chunk_count)``.
        """
        self._check(index)
        last = b"\x01" if index == self.chunk_count - 1 else b"\x00"
        return self._prefix + index.to_bytes(4, "big") + last

    def seal(self, index: int, plain: bytes) -> bytes:
        """Encrypt and authenticate chunk ``index``: ``len(plain) + 16`` bytes.

        Raises:
            ValueError: ``index`` out of range, or ``plain`` is not ``plain_length(index)``
                bytes.
        """
        if len(plain) != self.plain_length(index):
            raise ValueError(f"chunk {index} has {self.plain_length(index)} plaintext bytes")
        return self._aead.encrypt(self.nonce(index), plain, self._aad)

    def open(self, index: int, cipher: bytes) -> bytes:
        """Check and decrypt chunk ``index``: its plaintext.

        Raises:
            RemoteProtocolError: ``TransferErrorCode.RELAY_CHUNK_INVALID`` when the chunk
                does not authenticate (tampered, from another index or file, wrong key,
                truncated) or has the wrong length.
            ValueError: ``index`` is not in ``[0, chunk_count)`` (the caller's bug).
        """
        if len(cipher) != self.cipher_length(index):
            raise RemoteProtocolError(
                TransferErrorCode.RELAY_CHUNK_INVALID,
                f"relay chunk {index} has {len(cipher)} bytes, not {self.cipher_length(index)}",
            )
        try:
            return self._aead.decrypt(self.nonce(index), cipher, self._aad)
        except InvalidTag:
            raise RemoteProtocolError(
                TransferErrorCode.RELAY_CHUNK_INVALID, f"relay chunk {index} does not authenticate"
            ) from None
