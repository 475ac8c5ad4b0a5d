"""What crosses between a :class:`~protocol.connection.Connection` and its adapter.

Three kinds, all frozen dataclasses (aioquic's events style):

* **Outputs** the connection queues for its adapter, drained in order from one flat
  queue (:meth:`Connection.next_output`): :class:`Send` a frame; an **action** to
  perform (validate a path, check the store, append a chunk, run a job...), whose
  outcome the adapter reports back; an **event** to pass on (a reply the client's
  caller waits for, a file that arrived, a line for the log).
* **Reports**: the outcome of an action, given to :meth:`Connection.report`. A report
  about a transfer carries the transfer's serial number, so an outcome that arrives
  after its transfer ended (a write finishing after a cancel) is recognised and
  dropped instead of being taken for the next transfer's.

The actions and reports of proof of possession (AwaitProof, ReadStoredRanges,
ReadFileRanges, RecordOwnership, StoredRanges, FileRanges, ProofTimedOut) live in
:mod:`protocol.proof` and are importable from here.

Nothing here performs I/O. Sizes are bytes, times seconds unless a name says ``_ms``.
Source: DESIGN.md, "How data flows" (one path for every frame).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol.errors import PathReason, TransferErrorCode
from protocol.messages import JobComplete, JobMetrics, Message
from protocol.proof import (
    AwaitProof,
    FileRanges,
    ProofTimedOut,
    ReadFileRanges,
    ReadStoredRanges,
    RecordOwnership,
    StoredRanges,
)
from protocol.transfer_messages import FileMeta, FileMetaLegacy

__all__ = [
    "ActionFailed",
    "Append",
    "AwaitProof",
    "CancelJob",
    "CheckStore",
    "Delivered",
    "Discard",
    "FileHeld",
    "FileRanges",
    "FileToSend",
    "Finish",
    "InputAccepted",
    "JobEnded",
    "LookupResults",
    "Note",
    "OutputAccepted",
    "PackResults",
    "PathRefused",
    "PrepareOutput",
    "ProofTimedOut",
    "ReadFileRanges",
    "ReadStoredRanges",
    "ReceiveEnded",
    "RecordOwnership",
    "Refused",
    "ResultsFound",
    "ResultsUploaded",
    "Send",
    "SendEnded",
    "SendProgress",
    "StartJob",
    "StoreFailed",
    "StoreHas",
    "StoreOffset",
    "Stored",
    "StoredRanges",
    "StreamFrom",
    "UploadResults",
    "ValidateInput",
    "Violation",
    "WorkerBusy",
    "WorkerIdle",
    "Written",
]

# ===================================================================== outputs


@dataclass(frozen=True, slots=True)
class Send:
    """Put ``frame`` (the encoded ``message``) on the data channel."""

    message: Message
    frame: str | bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ValidateInput:
    """Worker: validate and open ``path`` as the job's input.

    Report :class:`InputAccepted`, :class:`PathRefused` or :class:`ActionFailed`.
    """

    path: str


@dataclass(frozen=True, slots=True)
class PrepareOutput:
    """Worker: validate and create the output folder ``path``.

    Report :class:`OutputAccepted`, :class:`PathRefused` or :class:`ActionFailed`.
    """

    path: str


@dataclass(frozen=True, slots=True)
class StartJob:
    """Worker: run the job now (the connection has seen the worker idle).

    Report :class:`JobEnded` when it ends, whatever the outcome.

    Attributes:
        job_id: the job's id (the client's, or one the connection made).
        input_path: the shared input as the client sent it, or None when the input is
            the file received over the channel (``input_sha256``).
        input_sha256: the received file's sha256, or None.
        input_name: the received file's name as the sender gave it, or None.
        output_path: the shared output folder, or None: the outputs go to the worker's
            job folder and RESULTS_REQUEST sends them back.
        validation_ms / file_access_ms: time the paths' checks took, milliseconds (for
            JOB_METRICS).
    """

    job_id: str
    input_path: str | None
    input_sha256: str | None
    input_name: str | None
    output_path: str | None
    validation_ms: float = 0.0
    file_access_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class CancelJob:
    """Worker: terminate the running job ``job_id`` (it then ends with JobEnded)."""

    job_id: str


@dataclass(frozen=True, slots=True)
class UploadResults:
    """Worker: upload the results ZIP of ``job_id`` to the storage service.

    ``output_path`` is the job's shared output folder, or None for the worker's job
    folder. Report :class:`ResultsUploaded` or :class:`ActionFailed`.
    """

    job_id: str
    output_path: str | None


@dataclass(frozen=True, slots=True)
class LookupResults:
    """Worker: find who ran ``job_id`` and where its outputs are.

    Report :class:`ResultsFound` (or :class:`ActionFailed`).
    """

    job_id: str


@dataclass(frozen=True, slots=True)
class PackResults:
    """Worker: pack the output folder of ``job_id`` into one ZIP to send.

    Report :class:`FileToSend` or :class:`ActionFailed`.
    """

    job_id: str
    output_path: str


@dataclass(frozen=True, slots=True)
class CheckStore:
    """Receiver: ask the store what it holds of ``meta``'s content.

    Report :class:`StoreHas`, :class:`StoreOffset` or :class:`StoreFailed` (DISK_FULL,
    QUOTA_EXCEEDED: checked here, before any byte). For a :class:`FileMetaLegacy` (no
    sha256) open an anonymous partial and report ``StoreOffset(0)``. A receiver that
    proves possession looks up and opens only the peer's principal's own partial.
    """

    transfer: int
    meta: FileMeta | FileMetaLegacy


@dataclass(frozen=True, slots=True)
class Append:
    """Receiver: append ``data`` to the open partial file (no reply needed).

    Report :class:`Written` as batches reach the disk, :class:`StoreFailed` when a
    write fails.
    """

    transfer: int
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Finish:
    """Receiver: every byte arrived: write the rest, verify the sha256, fsync, move
    the content into the store. Report :class:`Stored` or :class:`StoreFailed`."""

    transfer: int
    meta: FileMeta | FileMetaLegacy


@dataclass(frozen=True, slots=True)
class Discard:
    """Receiver: close the partial file; ``keep`` it for a resume, or delete it."""

    transfer: int
    keep: bool


@dataclass(frozen=True, slots=True)
class StreamFrom:
    """Sender: send the file's chunks from byte ``offset`` with
    :meth:`Connection.send_chunk`, then :meth:`Connection.end_of_file`."""

    offset: int
    meta: FileMeta


@dataclass(frozen=True, slots=True)
class Note:
    """Nothing to do: a line for the adapter's log."""

    text: str


@dataclass(frozen=True, slots=True)
class Delivered:
    """A message for the caller (client role: replies about its job)."""

    message: Message


@dataclass(frozen=True, slots=True)
class Refused:
    """The peer answered PROTOCOL_ERROR; ``request`` names what it refused
    (``input``, ``output``, ``start``, ``results``, ``results_via_storage``,
    ``file`` or ``""`` when nothing was waiting)."""

    code: str
    detail: str
    request: str


@dataclass(frozen=True, slots=True)
class Violation:
    """The peer sent something the protocol does not allow (already answered where
    the role answers): for logs and for a caller waiting on the connection."""

    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class FileHeld:
    """Receiver: a file is held now (received and verified, or already stored).

    Attributes:
        sha256: its digest; ``name`` the sender's name; ``size`` in bytes.
        existed: it was held before (FILE_EXISTS, no byte crossed).
        bytes_received: bytes that crossed for it this time (channel or relay road).
        road: how they came, JOB_METRICS' words: ``channel``, ``relay``,
            ``relay+channel`` (after a fallback) or ``stored`` (no byte moved).
    """

    sha256: str
    name: str
    size: int
    existed: bool
    bytes_received: int
    road: str = "channel"


@dataclass(frozen=True, slots=True)
class ReceiveEnded:
    """Receiver: a transfer ended without a stored file (TRANSFER_ERROR sent)."""

    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class SendProgress:
    """Sender: the receiver reported ``received`` of ``size`` bytes."""

    received: int
    size: int


@dataclass(frozen=True, slots=True)
class SendEnded:
    """Sender: how the transfer of ``sha256`` ended.

    Attributes:
        status: ``received`` (verified by the receiver), ``exists`` (no bytes sent),
            ``failed`` (TRANSFER_ERROR or a refusal) or ``cancelled``.
        offset: where sending started, bytes (0, or the resume offset).
        code / detail: the receiver's TRANSFER_ERROR (or refusal) code and detail.
        transfer: the sender's serial number of the transfer (a caller waiting for its
            own send tells it from an earlier, cancelled one of the same file); not part
            of the event's equality.
    """

    status: str
    sha256: str
    offset: int = 0
    code: str = ""
    detail: str = ""
    transfer: int = field(default=0, compare=False)


# ===================================================================== reports


@dataclass(frozen=True, slots=True)
class InputAccepted:
    """ValidateInput succeeded; timings of the check in milliseconds."""

    validation_ms: float = 0.0
    file_access_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class OutputAccepted:
    """PrepareOutput succeeded; time taken in milliseconds."""

    validation_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class PathRefused:
    """``action`` (ValidateInput or PrepareOutput) refused the path (sent as
    ``PATH_ERROR::{reason}: {path}``)."""

    action: ValidateInput | PrepareOutput
    reason: PathReason


@dataclass(frozen=True, slots=True)
class ActionFailed:
    """``action`` failed in a way that is not the peer's fault (sent as
    PROTOCOL_ERROR::INTERNAL_ERROR with ``detail``, which names no worker path)."""

    action: ValidateInput | PrepareOutput | UploadResults | LookupResults | PackResults
    detail: str


@dataclass(frozen=True, slots=True)
class JobEnded:
    """StartJob ended: ``complete`` (with ``metrics``) or a failure.

    Attributes:
        job_id: the job that ended.
        complete: JOB_COMPLETE to send, or None when the job failed.
        metrics: JOB_METRICS to send before it (completed jobs only).
        reason: JOB_FAILED's reason when the job failed (``cancelled`` after a cancel).
        path_error: the input vanished or was swapped at use: the reason is sent as
            PATH_ERROR, quoting the input as the client sent it, and as JOB_FAILED.
    """

    job_id: str
    complete: JobComplete | None = None
    metrics: JobMetrics | None = None
    reason: str = ""
    path_error: PathReason | None = None


@dataclass(frozen=True, slots=True)
class ResultsUploaded:
    """UploadResults succeeded: the ZIP is served at ``download_path``; ``sha256`` and
    ``size`` (bytes) are the stored ZIP's, ``token`` the owner's download capability."""

    job_id: str
    download_path: str
    sha256: str
    size: int
    token: str


@dataclass(frozen=True, slots=True)
class ResultsFound:
    """LookupResults' answer.

    Attributes:
        owner: the peer that ran the job, or None when the job is unknown.
        running: the job still runs on this worker.
        output_path: its output folder, when it exists.
    """

    job_id: str
    owner: str | None
    running: bool
    output_path: str | None


@dataclass(frozen=True, slots=True)
class FileToSend:
    """PackResults (or a client's own file): what to announce in FILE_META.

    Attributes:
        name: the base name; ``size`` bytes; ``sha256`` of the content.
    """

    name: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class StoreHas:
    """CheckStore: the whole content is held already (dedupe). A receiver that proves
    possession (a worker) reports it only when the peer's principal stored that content
    itself; otherwise it opens the principal's own partial (StoreOffset)."""

    transfer: int


@dataclass(frozen=True, slots=True)
class StoreOffset:
    """CheckStore: a partial file holding ``offset`` bytes is open for appending."""

    transfer: int
    offset: int


@dataclass(frozen=True, slots=True)
class Written:
    """Append: ``on_disk`` bytes of the file are written (resumed prefix included)."""

    transfer: int
    on_disk: int


@dataclass(frozen=True, slots=True)
class Stored:
    """Finish: the content was verified and stored under ``sha256``."""

    transfer: int
    sha256: str


@dataclass(frozen=True, slots=True)
class StoreFailed:
    """CheckStore, Append or Finish failed (HASH_MISMATCH, DISK_FULL, CANCELLED...).

    Attributes:
        keep_partial: what reached the disk stays for a resume (False: it is gone).
    """

    transfer: int
    code: TransferErrorCode
    detail: str
    keep_partial: bool = True


@dataclass(frozen=True, slots=True)
class WorkerBusy:
    """Worker-wide: a job runs (or the worker is stopping); JOB_START is refused."""

    detail: str


@dataclass(frozen=True, slots=True)
class WorkerIdle:
    """Worker-wide: no job runs; JOB_START may start one."""
