"""Every bound of the data-channel protocol, in one frozen value (sans-IO).

A peer that breaks a bound gets a coded refusal, never an unbounded buffer: frames
and fields (``PROTOCOL_ERROR::FRAME_TOO_LARGE``, ``PATH_TOO_LONG``,
``TOO_MANY_FIELDS``), names and path components (``TRANSFER_ERROR::INVALID_NAME``,
``PATH_ERROR::Path outside shared storage``), files and chunks
(``TRANSFER_ERROR::FILE_TOO_LARGE``, ``UNEXPECTED_DATA``).

Source: PROTOCOL.md section 1.2 ("Bounds"); h11 bounds every incomplete event the
same way (``max_incomplete_event_size``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_LIMITS",
    "KIB",
    "MAX_PROOF_RANGES",
    "MAX_PROOF_RANGE_BYTES",
    "MAX_RELAY_CHUNKS",
    "MIB",
    "RELAY_CHUNK_BYTES",
    "RELAY_MAX_CHUNK_BYTES",
    "RELAY_MIN_CHUNK_BYTES",
    "Limits",
]

KIB = 1024
MIB = 1024 * KIB
#: Most byte ranges a FILE_PROOF_REQUEST may name (the grammar's bound).
MAX_PROOF_RANGES = 16
#: Longest byte range a FILE_PROOF_REQUEST may name, bytes (the grammar's bound).
MAX_PROOF_RANGE_BYTES = 64 * KIB
#: Smallest relay-road chunk_size, bytes (the grammar's bound; PROTOCOL.md section 2.6).
RELAY_MIN_CHUNK_BYTES = 4 * KIB
#: Largest relay-road chunk_size, bytes (the grammar's bound).
RELAY_MAX_CHUNK_BYTES = 16 * MIB
#: The relay-road chunk_size a sender uses unless told otherwise, bytes.
RELAY_CHUNK_BYTES = MIB
#: Most chunks of one file on the relay road (the chunk index is 4 bytes of the nonce).
MAX_RELAY_CHUNKS = 2**32


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds one peer applies to what it receives (all sizes in bytes).

    Attributes:
        max_text_frame_bytes: longest text frame, bytes of UTF-8 (FRAME_TOO_LARGE).
        max_binary_frame_bytes: longest binary frame, and so the largest ``chunk_size``
            a receiver accepts (FRAME_TOO_LARGE; UNEXPECTED_DATA for a larger
            announced chunk_size). aiortc peers take 256 KiB; browsers 64 KiB.
        max_path_bytes: longest relative path, bytes of UTF-8 (PATH_TOO_LONG in a
            frame; ``Path outside shared storage`` once resolved). Linux ``PATH_MAX``.
        max_name_bytes: longest file name and path component, bytes of UTF-8
            (Linux ``NAME_MAX``).
        max_fields: most ``::``-separated fields in a text frame (TOO_MANY_FIELDS).
        max_file_bytes: largest file a receiver accepts over the channel
            (TRANSFER_ERROR::FILE_TOO_LARGE before any byte is sent).
        chunk_bytes: chunk size a sender uses (64 KiB: safe for every peer, browsers
            included).
        progress_interval_s: a receiver sends FILE_PROGRESS at most this often,
            seconds.
        proof_ranges: byte ranges a receiver asks in FILE_PROOF_REQUEST (at most
            ``MAX_PROOF_RANGES``; a file shorter than all of them is asked whole).
        proof_range_bytes: length of each range, bytes (at most ``MAX_PROOF_RANGE_BYTES``).
        proof_timeout_s: a receiver waits this long for FILE_PROOF, seconds; then it
            answers FILE_READY::0 as for a wrong proof.
        max_relay_parts: most RELAY_PART frames a receiver holds for one transfer (the
            one being fetched included); one more ends the relay road with
            RELAY_ENDED RELAY_PARTS_EXCEEDED.
    """

    max_text_frame_bytes: int = 64 * KIB
    max_binary_frame_bytes: int = 256 * KIB
    max_path_bytes: int = 4096
    max_name_bytes: int = 255
    max_fields: int = 1024
    max_file_bytes: int = 10 * 1024 * MIB
    chunk_bytes: int = 64 * KIB
    progress_interval_s: float = 0.5
    proof_ranges: int = 8
    proof_range_bytes: int = 4 * KIB
    proof_timeout_s: float = 10.0
    max_relay_parts: int = 8

    def __post_init__(self) -> None:
        for name in (
            "max_text_frame_bytes",
            "max_binary_frame_bytes",
            "max_path_bytes",
            "max_name_bytes",
            "max_fields",
            "max_file_bytes",
            "chunk_bytes",
            "proof_ranges",
            "proof_range_bytes",
            "max_relay_parts",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer: {value!r}")
        if not self.progress_interval_s >= 0:
            raise ValueError("Limits.progress_interval_s must be >= 0 seconds")
        if self.proof_ranges > MAX_PROOF_RANGES or self.proof_range_bytes > MAX_PROOF_RANGE_BYTES:
            raise ValueError(
                f"Limits.proof_ranges <= {MAX_PROOF_RANGES} and "
                f"Limits.proof_range_bytes <= {MAX_PROOF_RANGE_BYTES}"
            )
        if not self.proof_timeout_s > 0:
            raise ValueError("Limits.proof_timeout_s must be > 0 seconds")


DEFAULT_LIMITS = Limits()
"""The bounds used when none are given."""
