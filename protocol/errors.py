"""Protocol errors in two directions, each carrying the code of its reply frame.

Modelled on h11's ``ProtocolError`` split:

* :class:`RemoteProtocolError`: the peer sent something invalid (a malformed frame,
  a frame not allowed in the current state). The receiver answers with
  ``PROTOCOL_ERROR::{code}::{detail}`` and keeps serving.
* :class:`LocalProtocolError`: our own code tried to build or send something the
  protocol does not allow. It is a bug on our side, never the peer's fault.

Both carry an :class:`ErrorCode`, so an adapter can turn any protocol error into a
reply frame without inspecting messages.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ErrorCode",
    "LocalProtocolError",
    "PathReason",
    "ProtocolError",
    "RelayEndCode",
    "RemoteProtocolError",
    "TransferErrorCode",
]


class ErrorCode(StrEnum):
    """Codes carried by ``PROTOCOL_ERROR::{code}::{detail}`` frames."""

    #: The frame's type (the text before the first ``::``) is not a known message.
    UNKNOWN_MESSAGE = "UNKNOWN_MESSAGE"
    #: The frame has a known type but its fields do not follow the grammar.
    MALFORMED_FRAME = "MALFORMED_FRAME"
    #: The frame is longer than the configured bound (bytes of UTF-8 text).
    FRAME_TOO_LARGE = "FRAME_TOO_LARGE"
    #: A path field is longer than the configured bound (bytes of UTF-8).
    PATH_TOO_LONG = "PATH_TOO_LONG"
    #: The frame has more ``::``-separated fields than the configured bound.
    TOO_MANY_FIELDS = "TOO_MANY_FIELDS"
    #: A job_id does not match ``[A-Za-z0-9._-]{1,64}``.
    INVALID_JOB_ID = "INVALID_JOB_ID"
    #: The message is valid but not allowed in the session's current state.
    UNEXPECTED_MESSAGE = "UNEXPECTED_MESSAGE"
    #: A binary frame arrived where no file transfer is open.
    UNEXPECTED_DATA = "UNEXPECTED_DATA"
    #: Another job is running on this worker (possibly for another client).
    WORKER_BUSY = "WORKER_BUSY"
    #: A shared-storage path was sent to a worker that has no shared storage.
    NO_SHARED_STORAGE = "NO_SHARED_STORAGE"
    #: The receiver could not keep up (its inbound queue is full).
    OVERLOADED = "OVERLOADED"
    #: RESULTS_REQUEST names a job this worker has no results for.
    UNKNOWN_JOB = "UNKNOWN_JOB"
    #: RESULTS_VIA_STORAGE was sent to a worker without a storage service configured.
    NO_STORAGE = "NO_STORAGE"
    #: The worker failed in a way that is not the peer's fault.
    INTERNAL_ERROR = "INTERNAL_ERROR"
    #: A job or transfer frame came before the channel handshake, and this worker does
    #: not accept anonymous clients (PROTOCOL.md section 5).
    AUTH_REQUIRED = "AUTH_REQUIRED"
    #: A handshake signature does not verify (or the handshake failed earlier).
    AUTH_FAILED = "AUTH_FAILED"
    #: The client proved its key, but the worker accepts only its authorized clients.
    NOT_AUTHORIZED = "NOT_AUTHORIZED"
    #: (Local) A forced road cannot be taken (:func:`protocol.roads.choose_road`).
    ROAD_UNAVAILABLE = "ROAD_UNAVAILABLE"


class TransferErrorCode(StrEnum):
    """Codes carried by ``TRANSFER_ERROR::{code}::{detail}``."""

    #: The sha256 of the received bytes differs from the announced one.
    HASH_MISMATCH = "HASH_MISMATCH"
    #: More or fewer bytes than announced arrived before END_OF_FILE.
    SIZE_MISMATCH = "SIZE_MISMATCH"
    #: The announced size is above the receiver's maximum; no byte was sent.
    FILE_TOO_LARGE = "FILE_TOO_LARGE"
    #: The receiver's disk is full, or would fall below the receiver's free-space reserve
    #: (refused at FILE_META or while writing, before the disk fills); the partial data
    #: is kept for a resume.
    DISK_FULL = "DISK_FULL"
    #: The name is not a plain base name (directory part, ``..``, NUL, control chars).
    INVALID_NAME = "INVALID_NAME"
    #: FILE_CANCEL stopped the transfer; the partial data is kept for a resume.
    CANCELLED = "CANCELLED"
    #: A binary frame arrived outside a transfer, or a chunk broke its bounds.
    UNEXPECTED_DATA = "UNEXPECTED_DATA"
    #: The sender's principal holds too many or too large unfinished transfers (partial
    #: files) on the receiver; nothing was written. They count until they complete or expire.
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    #: A relay-road ciphertext chunk failed authentication (tampered, swapped, dropped,
    #: wrong key, truncated object); nothing of it was written. The same value as
    #: :attr:`RelayEndCode.RELAY_CHUNK_INVALID`.
    RELAY_CHUNK_INVALID = "RELAY_CHUNK_INVALID"


class RelayEndCode(StrEnum):
    """Codes carried by ``RELAY_ENDED::{sha256}::{offset}::{code}::{detail}``: why the relay
    road ended for a transfer. The transfer stays open at the verified offset; the sender
    continues on the data channel or cancels (PROTOCOL.md section 2.6)."""

    #: The sender's RELAY_STOP was taken: the fetch stopped.
    STOPPED = "STOPPED"
    #: The storage service could not be reached after retries, or timed out.
    RELAY_UNREACHABLE = "RELAY_UNREACHABLE"
    #: The relay object is gone (HTTP 404/410: expired, deleted or a wrong token; the
    #: service does not say which).
    RELAY_GONE = "RELAY_GONE"
    #: The storage service refused the receiver's API key (HTTP 401/403).
    RELAY_REFUSED = "RELAY_REFUSED"
    #: A ciphertext chunk failed authentication (tampered, swapped, wrong key, short
    #: object); only the chunks before it were written.
    RELAY_CHUNK_INVALID = "RELAY_CHUNK_INVALID"
    #: More RELAY_PART frames were queued than ``Limits.max_relay_parts``.
    RELAY_PARTS_EXCEEDED = "RELAY_PARTS_EXCEEDED"


class PathReason(StrEnum):
    """Why a path was refused: ``PATH_ERROR::{reason}: {path}`` (the value is the reason).

    The path is quoted exactly as the client sent it, never as the worker resolved it.
    Source: PROTOCOL.md section 3.1.
    """

    #: Absolute, UNC or drive path, a ``..`` component, NUL or control characters, a
    #: component over 255 bytes, a look-alike of ``/``, ``\\``, ``.`` or ``..`` after NFKC,
    #: or a symlink (file or directory) leading outside the root. Containment is checked
    #: before existence, so this is the answer whether or not the target exists.
    OUTSIDE_ROOT = "Path outside shared storage"
    #: Nothing there (inside the root), at validation.
    NOT_FOUND = "Input path does not exist"
    #: It existed at validation but is gone at JOB_START (followed by JOB_FAILED).
    VANISHED = "File not found"
    #: The worker cannot read it or create the output folder, or the input or output is
    #: the shared root or one of the worker's own folders.
    PERMISSION_DENIED = "Permission denied"
    #: A ZIP whose central directory cannot be read, with unsafe, encrypted or duplicate
    #: members, or over the caps (size, ratio, member count); or not a regular file where
    #: one is needed.
    CORRUPTED = "File corrupted or invalid format"
    #: The output path (or one of its parents) is an existing file.
    NOT_A_DIRECTORY = "Not a directory"
    #: The input file has more than one hard link: another name, possibly outside the
    #: root, leads to the same content (refused unless the worker's operator allows it).
    HARD_LINKED = "Hard-linked file refused"

    def quote(self, path: str) -> str:
        """The text of the PATH_ERROR frame: ``"{reason}: {path}"``."""
        return f"{self.value}: {path}"


class ProtocolError(Exception):
    """Base class of both error directions.

    Attributes:
        code: the :class:`ErrorCode` to put in the ``PROTOCOL_ERROR`` reply (a
            :class:`TransferErrorCode` when the error ends a transfer instead, as
            :class:`protocol.relay_crypto.ChunkCipher` raises RELAY_CHUNK_INVALID).
        detail: a human-readable explanation, safe to send to the peer (it never
            contains the worker's absolute paths).
    """

    def __init__(self, code: ErrorCode | TransferErrorCode, detail: str) -> None:
        if type(self) is ProtocolError:
            raise TypeError("raise LocalProtocolError or RemoteProtocolError, not ProtocolError")
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class LocalProtocolError(ProtocolError):
    """We tried to build or send something the protocol does not allow (our bug)."""

    def as_remote(self) -> RemoteProtocolError:
        """The same error blamed on the peer: used when the event came from the wire."""
        return RemoteProtocolError(self.code, self.detail)


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow; answer and keep serving."""
