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
    "ProtocolError",
    "RemoteProtocolError",
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


class ProtocolError(Exception):
    """Base class of both error directions.

    Attributes:
        code: the :class:`ErrorCode` to put in the ``PROTOCOL_ERROR`` reply.
        detail: a human-readable explanation, safe to send to the peer (it never
            contains the worker's absolute paths).
    """

    def __init__(self, code: ErrorCode, detail: str) -> None:
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
