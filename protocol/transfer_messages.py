"""File-transfer messages: one frozen, slotted, typed class per frame (sans-IO).

The frames of a channel transfer, in either direction (PROTOCOL.md section 2.3):
FILE_META (and its earlier single-colon form), FILE_PROOF_REQUEST and FILE_PROOF (proof
of possession before dedupe), FILE_READY, FILE_EXISTS, binary chunks, FILE_PROGRESS,
END_OF_FILE, FILE_RECEIVED, TRANSFER_ERROR and FILE_CANCEL. Each is validated when
built, with the field checks of :mod:`protocol.messages`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from protocol.errors import ErrorCode
from protocol.limits import MAX_PROOF_RANGE_BYTES, MAX_PROOF_RANGES
from protocol.messages import (
    SEP,
    Message,
    check_code,
    check_count,
    check_sha256,
    check_text,
    invalid,
)

__all__ = [
    "Chunk",
    "EndOfFile",
    "FileCancel",
    "FileExists",
    "FileMeta",
    "FileMetaLegacy",
    "FileProgress",
    "FileProof",
    "FileProofRequest",
    "FileReady",
    "FileReceived",
    "ProofRange",
    "TransferError",
]


@dataclass(frozen=True, slots=True)
class FileMeta(Message):
    """Sender->receiver ``FILE_META::{name}::{size}::{sha256}::{chunk_size}``.

    Opens a transfer. ``size`` and ``chunk_size`` are bytes; the last three fields
    are parsed from the right, so ``name`` may contain ``::``. Whether the name is an
    acceptable base name is the receiver's decision (TRANSFER_ERROR INVALID_NAME).
    """

    TYPE: ClassVar[str] = "FILE_META"
    name: str
    size: int
    sha256: str
    chunk_size: int = 65536

    def __post_init__(self) -> None:
        check_text("name", self.name, allow_empty=False)
        check_count("size", self.size)
        check_count("chunk_size", self.chunk_size, minimum=1)
        object.__setattr__(self, "sha256", check_sha256(self.sha256))


@dataclass(frozen=True, slots=True)
class FileMetaLegacy(Message):
    """The earlier form ``FILE_META::{name}:{size}:{gui}`` (single colons).

    Chunks follow at once, without FILE_READY; there is no resume and no dedupe,
    and the receiver answers FILE_RECEIVED with the sha256 it computed. ``name``
    may not contain ``::`` and ``gui`` may not contain ``:``.
    """

    TYPE: ClassVar[str] = "FILE_META"
    name: str
    size: int
    gui: str = ""

    def __post_init__(self) -> None:
        check_text("name", self.name, allow_empty=False, one_line=True)
        if SEP in self.name:
            raise invalid(ErrorCode.MALFORMED_FRAME, "a legacy FILE_META name has no '::'")
        check_count("size", self.size)
        check_text("gui", self.gui, one_line=True)
        if ":" in self.gui:
            raise invalid(ErrorCode.MALFORMED_FRAME, "gui has no ':'")


#: A byte range of a proof of possession: ``(offset, length)``, bytes.
ProofRange = tuple[int, int]
#: A proof nonce on the wire: 32 hexadecimal digits (16 bytes), either case (``fullmatch``).
NONCE_PATTERN = re.compile(r"[0-9a-fA-F]{32}")


@dataclass(frozen=True, slots=True)
class FileProofRequest(Message):
    """Receiver->sender ``FILE_PROOF_REQUEST::{nonce}::{ranges}``: prove you hold the file.

    ``nonce`` is 32 hexadecimal digits (kept lowercase), fresh for each request;
    ``ranges`` are 1 to ``MAX_PROOF_RANGES`` byte ranges ``(offset, length)`` of the
    announced file, each 1 to ``MAX_PROOF_RANGE_BYTES`` long, written
    ``{offset}+{length}`` and joined by ``,``. The sender answers FILE_PROOF with
    :func:`protocol.proof.proof_digest` of them (PROTOCOL.md section 2.3).
    """

    TYPE: ClassVar[str] = "FILE_PROOF_REQUEST"
    nonce: str
    ranges: tuple[ProofRange, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.nonce, str) or not NONCE_PATTERN.fullmatch(self.nonce):
            raise invalid(ErrorCode.MALFORMED_FRAME, "nonce must be 32 hexadecimal digits")
        object.__setattr__(self, "nonce", self.nonce.lower())
        ranges = self.ranges
        if not isinstance(ranges, tuple) or not 1 <= len(ranges) <= MAX_PROOF_RANGES:
            raise invalid(
                ErrorCode.MALFORMED_FRAME, f"a proof names 1 to {MAX_PROOF_RANGES} byte ranges"
            )
        for pair in ranges:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise invalid(ErrorCode.MALFORMED_FRAME, "a range is (offset, length)")
            offset, length = pair
            check_count("offset", offset)
            check_count("length", length, minimum=1)
            if length > MAX_PROOF_RANGE_BYTES or offset + length >= 10**18:
                raise invalid(
                    ErrorCode.MALFORMED_FRAME,
                    f"a range is 1 to {MAX_PROOF_RANGE_BYTES} bytes, below 10^18",
                )

    @property
    def end(self) -> int:
        """The end of the furthest range, bytes (it must lie within the file)."""
        return max(offset + length for offset, length in self.ranges)


@dataclass(frozen=True, slots=True)
class FileProof(Message):
    """Sender->receiver ``FILE_PROOF::{sha256}``: the proof digest of the asked ranges."""

    TYPE: ClassVar[str] = "FILE_PROOF"
    sha256: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", check_sha256(self.sha256))


@dataclass(frozen=True, slots=True)
class FileReady(Message):
    """Receiver->sender ``FILE_READY::{offset}``: send from byte ``offset`` (0 = new)."""

    TYPE: ClassVar[str] = "FILE_READY"
    offset: int

    def __post_init__(self) -> None:
        check_count("offset", self.offset)


@dataclass(frozen=True, slots=True)
class FileExists(Message):
    """Receiver->sender ``FILE_EXISTS::{sha256}``: the content is held; no bytes are sent."""

    TYPE: ClassVar[str] = "FILE_EXISTS"
    sha256: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", check_sha256(self.sha256))


@dataclass(frozen=True, slots=True)
class EndOfFile(Message):
    """Sender->receiver ``END_OF_FILE``: every chunk was sent."""

    TYPE: ClassVar[str] = "END_OF_FILE"


@dataclass(frozen=True, slots=True)
class FileProgress(Message):
    """Receiver->sender ``FILE_PROGRESS::{bytes_received}::{size}`` (at most every 500 ms)."""

    TYPE: ClassVar[str] = "FILE_PROGRESS"
    received: int
    size: int

    def __post_init__(self) -> None:
        check_count("bytes_received", self.received)
        check_count("size", self.size)


@dataclass(frozen=True, slots=True)
class FileReceived(Message):
    """Receiver->sender ``FILE_RECEIVED::{sha256}``: stored and verified."""

    TYPE: ClassVar[str] = "FILE_RECEIVED"
    sha256: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", check_sha256(self.sha256))


@dataclass(frozen=True, slots=True)
class TransferError(Message):
    """Either direction ``TRANSFER_ERROR::{code}::{detail}``; code from TransferErrorCode."""

    TYPE: ClassVar[str] = "TRANSFER_ERROR"
    code: str
    detail: str = ""

    def __post_init__(self) -> None:
        check_code(self)


@dataclass(frozen=True, slots=True)
class FileCancel(Message):
    """Either direction ``FILE_CANCEL``: stop the transfer; the partial data is kept."""

    TYPE: ClassVar[str] = "FILE_CANCEL"


@dataclass(frozen=True, slots=True)
class Chunk(Message):
    """A binary frame: a chunk of file bytes (only valid inside a file transfer)."""

    data: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.data, bytes):
            raise invalid(ErrorCode.MALFORMED_FRAME, "chunk data must be bytes")

    def __repr__(self) -> str:
        return f"Chunk(<{len(self.data)} bytes>)"
