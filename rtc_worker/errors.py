"""Exceptions a client raises about a job or a transfer: one class per wire error code.

The worker answers with four kinds of frame, and each code of each kind has its own
class, so a caller catches what it can handle (``except InputNotFound``) instead of
matching text:

* ``PATH_ERROR::{reason}: {path}`` -> :class:`PathRefusedError` and a subclass per
  :class:`~protocol.errors.PathReason`;
* ``PROTOCOL_ERROR::{code}::{detail}`` -> :class:`WorkerProtocolError` and a subclass per
  :class:`~protocol.errors.ErrorCode` (:class:`WorkerBusy`, :class:`UnknownJob`...);
* ``TRANSFER_ERROR::{code}::{detail}`` -> :class:`TransferFailedError` and a subclass per
  :class:`~protocol.errors.TransferErrorCode` (:class:`HashMismatch`...);
* ``JOB_FAILED::{job_id}::{reason}`` -> :class:`JobFailedError` (:class:`JobCancelled`
  when the reason is ``cancelled``).

A code this client does not know (a newer worker) gets the base class of its kind.
Source: PROTOCOL.md section 3.
"""

from __future__ import annotations

from typing import ClassVar

from protocol import ErrorCode, PathError, PathReason, TransferErrorCode

__all__ = [
    "CANCELLED_REASON",
    "AuthFailed",
    "AuthRequired",
    "ClientError",
    "DiskFull",
    "FileTooLarge",
    "HandshakeError",
    "HashMismatch",
    "InputCorrupted",
    "InputHardLinked",
    "InputNotFound",
    "InputVanished",
    "InternalWorkerError",
    "InvalidName",
    "JobCancelled",
    "JobFailedError",
    "MalformedReply",
    "NoResultsService",
    "NoSharedStorage",
    "NotADirectory",
    "NotAuthorized",
    "PathOutsideRoot",
    "PathPermissionDenied",
    "PathRefusedError",
    "QuotaExceeded",
    "RelayChunkInvalid",
    "RoadFailed",
    "RoadUnavailable",
    "SizeMismatch",
    "TransferCancelled",
    "TransferFailedError",
    "UnexpectedData",
    "UnexpectedMessage",
    "UnknownJob",
    "WorkerBusy",
    "WorkerKeyChanged",
    "WorkerOverloaded",
    "WorkerProtocolError",
    "path_refused",
    "transfer_ended",
    "transfer_failed",
    "worker_protocol_error",
]

#: The JOB_FAILED reason of a cancelled job.
CANCELLED_REASON = "cancelled"


class ClientError(Exception):
    """Base of every error the client raises about a job, a transfer or a connection."""


# ------------------------------------------------------------------ PATH_ERROR


class PathRefusedError(ClientError):
    """``PATH_ERROR::{reason}``: the worker refused a path.

    Attributes:
        reason: the frame's whole text (``{PathReason}: {path}``).
        kind: its :class:`PathReason`, or None for text this client does not know.
        path: the path quoted, as the client sent it (None for unknown text).
    """

    KIND: ClassVar[PathReason | None] = None

    def __init__(self, message: PathError) -> None:
        super().__init__(message.reason)
        self.reason = message.reason
        self.kind = message.kind
        self.path = message.path


class PathOutsideRoot(PathRefusedError):
    """``Path outside shared storage``: invalid, absolute, traversing or escaping."""

    KIND = PathReason.OUTSIDE_ROOT


class InputNotFound(PathRefusedError):
    """``Input path does not exist`` (a local copy may be sent over the channel)."""

    KIND = PathReason.NOT_FOUND


class InputVanished(PathRefusedError):
    """``File not found``: the input was there at validation, gone at use."""

    KIND = PathReason.VANISHED


class PathPermissionDenied(PathRefusedError):
    """``Permission denied``: unreadable, not creatable, or a worker folder."""

    KIND = PathReason.PERMISSION_DENIED


class InputCorrupted(PathRefusedError):
    """``File corrupted or invalid format`` (a local copy may be sent over the channel)."""

    KIND = PathReason.CORRUPTED


class NotADirectory(PathRefusedError):
    """``Not a directory``: the output (or a parent) is a file."""

    KIND = PathReason.NOT_A_DIRECTORY


class InputHardLinked(PathRefusedError):
    """``Hard-linked file refused``: the input has other names (hard links), which may
    lie outside the shared root; the worker refuses it unless its operator allows it."""

    KIND = PathReason.HARD_LINKED


_PATH_CLASSES: dict[PathReason, type[PathRefusedError]] = {
    cls.KIND: cls
    for cls in (
        PathOutsideRoot,
        InputNotFound,
        InputVanished,
        PathPermissionDenied,
        InputCorrupted,
        NotADirectory,
        InputHardLinked,
    )
    if cls.KIND is not None
}


def path_refused(message: PathError) -> PathRefusedError:
    """The exception for a PATH_ERROR frame: the subclass of its reason."""
    cls = _PATH_CLASSES.get(message.kind) if message.kind is not None else None
    return (cls or PathRefusedError)(message)


# ------------------------------------------------------------------ PROTOCOL_ERROR


class WorkerProtocolError(ClientError):
    """``PROTOCOL_ERROR::{code}::{detail}``: the worker refused a frame (or the worker
    sent something this client cannot accept: code MALFORMED_FRAME and the like).

    Attributes:
        code: the code as sent; ``detail`` its explanation.
    """

    CODE: ClassVar[str] = ""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class WorkerBusy(WorkerProtocolError):
    """``WORKER_BUSY``: another job runs on the worker (or it is stopping); retry later."""

    CODE = ErrorCode.WORKER_BUSY


class NoSharedStorage(WorkerProtocolError):
    """``NO_SHARED_STORAGE``: the worker has no shared storage; send the file instead."""

    CODE = ErrorCode.NO_SHARED_STORAGE


class NoResultsService(WorkerProtocolError):
    """``NO_STORAGE``: the worker has no storage service for RESULTS_VIA_STORAGE."""

    CODE = ErrorCode.NO_STORAGE


class UnknownJob(WorkerProtocolError):
    """``UNKNOWN_JOB``: no results of that job for this client."""

    CODE = ErrorCode.UNKNOWN_JOB


class UnexpectedMessage(WorkerProtocolError):
    """``UNEXPECTED_MESSAGE``: not allowed in the worker's state (a job still runs...)."""

    CODE = ErrorCode.UNEXPECTED_MESSAGE


class WorkerOverloaded(WorkerProtocolError):
    """``OVERLOADED``: the worker could not keep up and closed the channel."""

    CODE = ErrorCode.OVERLOADED


class InternalWorkerError(WorkerProtocolError):
    """``INTERNAL_ERROR``: the worker failed in a way that is not the client's fault."""

    CODE = ErrorCode.INTERNAL_ERROR


class HandshakeError(WorkerProtocolError):
    """The channel handshake failed (PROTOCOL.md section 5); the channel is closed."""


class AuthRequired(HandshakeError):
    """``AUTH_REQUIRED``: this worker accepts no anonymous clients; authenticate."""

    CODE = ErrorCode.AUTH_REQUIRED


class AuthFailed(HandshakeError):
    """``AUTH_FAILED``: a handshake signature did not verify (ours at the worker, or the
    worker's here: someone may sit between us)."""

    CODE = ErrorCode.AUTH_FAILED


class NotAuthorized(HandshakeError):
    """``NOT_AUTHORIZED``: the worker accepts only its authorized clients' keys."""

    CODE = ErrorCode.NOT_AUTHORIZED


class WorkerKeyChanged(HandshakeError):
    """``WORKER_KEY_CHANGED``: the worker proved another key than the one pinned for it
    (``--worker-key`` or the known-workers file). Someone may be impersonating it; if the
    operator really replaced its key, remove the old line from the known-workers file."""

    CODE = "WORKER_KEY_CHANGED"


class MalformedReply(WorkerProtocolError):
    """A frame breaking the grammar, in either direction (``MALFORMED_FRAME``,
    ``UNKNOWN_MESSAGE``, ``FRAME_TOO_LARGE``, ``PATH_TOO_LONG``, ``TOO_MANY_FIELDS``,
    ``INVALID_JOB_ID``, ``UNEXPECTED_DATA``)."""


class RoadUnavailable(WorkerProtocolError):
    """``ROAD_UNAVAILABLE``: a road was asked for that cannot be taken."""

    CODE = ErrorCode.ROAD_UNAVAILABLE


_PROTOCOL_CLASSES: dict[str, type[WorkerProtocolError]] = {
    cls.CODE: cls
    for cls in (
        WorkerBusy,
        NoSharedStorage,
        NoResultsService,
        UnknownJob,
        UnexpectedMessage,
        WorkerOverloaded,
        InternalWorkerError,
        AuthRequired,
        AuthFailed,
        NotAuthorized,
        WorkerKeyChanged,
        RoadUnavailable,
    )
}
_GRAMMAR_CODES = frozenset(
    {
        ErrorCode.MALFORMED_FRAME,
        ErrorCode.UNKNOWN_MESSAGE,
        ErrorCode.FRAME_TOO_LARGE,
        ErrorCode.PATH_TOO_LONG,
        ErrorCode.TOO_MANY_FIELDS,
        ErrorCode.INVALID_JOB_ID,
        ErrorCode.UNEXPECTED_DATA,
    }
)


def worker_protocol_error(code: str, detail: str) -> WorkerProtocolError:
    """The exception for a PROTOCOL_ERROR code: the subclass of its code."""
    if code in _GRAMMAR_CODES:
        return MalformedReply(code, detail)
    return _PROTOCOL_CLASSES.get(code, WorkerProtocolError)(code, detail)


# ------------------------------------------------------------------ TRANSFER_ERROR


class TransferFailedError(ClientError):
    """``TRANSFER_ERROR::{code}::{detail}``: a file transfer ended without the file.

    Attributes:
        code: the code as sent; ``detail`` its explanation.
    """

    CODE: ClassVar[str] = ""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"transfer failed: {code}: {detail}")
        self.code = code
        self.detail = detail


class HashMismatch(TransferFailedError):
    """``HASH_MISMATCH``: the bytes received do not have the announced sha256."""

    CODE = TransferErrorCode.HASH_MISMATCH


class SizeMismatch(TransferFailedError):
    """``SIZE_MISMATCH``: more or fewer bytes than announced."""

    CODE = TransferErrorCode.SIZE_MISMATCH


class FileTooLarge(TransferFailedError):
    """``FILE_TOO_LARGE``: above the receiver's maximum; nothing was sent."""

    CODE = TransferErrorCode.FILE_TOO_LARGE


class DiskFull(TransferFailedError):
    """``DISK_FULL``: the receiver's disk is full; its partial data is kept."""

    CODE = TransferErrorCode.DISK_FULL


class QuotaExceeded(TransferFailedError):
    """``QUOTA_EXCEEDED``: our principal holds too many or too large unfinished transfers
    on the receiver; nothing was written (they count until they complete or expire)."""

    CODE = TransferErrorCode.QUOTA_EXCEEDED


class InvalidName(TransferFailedError):
    """``INVALID_NAME``: not a plain base name."""

    CODE = TransferErrorCode.INVALID_NAME


class TransferCancelled(TransferFailedError):
    """``CANCELLED``: stopped by FILE_CANCEL (or taken over); partial data is kept."""

    CODE = TransferErrorCode.CANCELLED


class UnexpectedData(TransferFailedError):
    """``UNEXPECTED_DATA``: a chunk outside a transfer or beyond its bounds."""

    CODE = TransferErrorCode.UNEXPECTED_DATA


class RelayChunkInvalid(TransferFailedError):
    """``RELAY_CHUNK_INVALID``: a relay-road chunk failed authentication (tampered,
    swapped, wrong key, short object); nothing of it was stored."""

    CODE = TransferErrorCode.RELAY_CHUNK_INVALID


_TRANSFER_CLASSES: dict[str, type[TransferFailedError]] = {
    cls.CODE: cls
    for cls in (
        HashMismatch,
        SizeMismatch,
        FileTooLarge,
        DiskFull,
        InvalidName,
        TransferCancelled,
        UnexpectedData,
        QuotaExceeded,
        RelayChunkInvalid,
    )
}


def transfer_failed(code: str, detail: str) -> TransferFailedError:
    """The exception for a TRANSFER_ERROR code: the subclass of its code."""
    return _TRANSFER_CLASSES.get(code, TransferFailedError)(code, detail)


def transfer_ended(code: str, detail: str) -> ClientError:
    """The exception for a transfer that ended without the file: the
    :class:`TransferFailedError` subclass of a TRANSFER_ERROR code, or, when the peer
    refused the transfer's frame with a PROTOCOL_ERROR (``AUTH_REQUIRED`` from a worker
    that admits no anonymous clients, ``UNEXPECTED_MESSAGE``...), the
    :class:`WorkerProtocolError` subclass of that code."""
    if code in ErrorCode.__members__ and code not in TransferErrorCode.__members__:
        return worker_protocol_error(code, detail)
    return transfer_failed(code, detail)


class RoadFailed(ClientError):
    """The road forced with ``--road`` is unavailable (``ROAD_UNAVAILABLE``: the worker
    does not serve it, the storage service is unreachable, no shared path...) or, for
    the relay road, failed mid-transfer (the ``RELAY_ENDED`` code: ``RELAY_UNREACHABLE``,
    ``RELAY_GONE``...); an automatic choice continues on the data channel instead.

    Attributes:
        code: the code; ``detail`` its explanation; ``road`` the road forced.
    """

    def __init__(self, code: str, detail: str, *, road: str | None = None) -> None:
        super().__init__(f"road {road or '?'} failed: {code}: {detail}")
        self.code = code
        self.detail = detail
        self.road = road


# ------------------------------------------------------------------ JOB_FAILED


class JobFailedError(ClientError):
    """``JOB_FAILED::{job_id}::{reason}``."""

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(f"job {job_id} failed: {reason}")
        self.job_id = job_id
        self.reason = reason


class JobCancelled(JobFailedError):
    """``JOB_FAILED::{job_id}::cancelled``: the job was cancelled (JOB_CANCEL)."""
