"""Data-channel messages and their wire codec (sans-IO).

Every text frame is ``TYPE`` or ``TYPE::field::field...``: the type is the text before
the first ``::``. Binary frames carry file bytes. Each message is one frozen,
slotted dataclass, validated when built: building an invalid message raises
:class:`~protocol.errors.LocalProtocolError`; decoding an invalid frame raises
:class:`~protocol.errors.RemoteProtocolError`. Nothing else escapes :func:`decode`.

Fields that may contain ``::`` (paths, reasons, log lines) are always the last
free-text field of their frame, or are delimited from the right by fields whose
grammar cannot contain ``::``, so every frame has exactly one parse.

Source: the job protocol of the shared-storage worker (README, "Data-channel
protocol"); the codec follows h11's events (frozen classes, bounded input).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError, TransferErrorCode
from protocol.limits import DEFAULT_LIMITS, Limits

__all__ = [
    "DEFAULT_LIMITS",
    "JOB_ID_PATTERN",
    "SEP",
    "Chunk",
    "EndOfFile",
    "FileCancel",
    "FileExists",
    "FileMeta",
    "FileMetaLegacy",
    "FileProgress",
    "FileReady",
    "FileReceived",
    "JobCancel",
    "JobComplete",
    "JobFailed",
    "JobId",
    "JobLog",
    "JobMetrics",
    "JobStart",
    "Limits",
    "Message",
    "PathError",
    "PathValidated",
    "ProtocolErrorFrame",
    "ResultsRequest",
    "ResultsStored",
    "ResultsViaStorage",
    "SharedInputPath",
    "SharedOutputPath",
    "TransferError",
    "TransferErrorCode",
    "decode",
    "encode",
    "is_valid_job_id",
]

SEP = "::"
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
_CODE_PATTERN = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_COUNT_PATTERN = re.compile(r"[0-9]{1,15}")
_COUNT18_PATTERN = re.compile(r"[0-9]{1,18}")
_MB_PATTERN = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,6})?")
_MAX_MB = 1e14
_SHA256_PATTERN = re.compile(r"[0-9a-fA-F]{64}")
_LEGACY_META = re.compile(r"(?P<name>.+):(?P<size>[0-9]{1,18}):(?P<gui>[^:]*)", re.DOTALL)


def is_valid_job_id(job_id: str) -> bool:
    """True when ``job_id`` matches ``[A-Za-z0-9._-]{1,64}``."""
    return JOB_ID_PATTERN.fullmatch(job_id) is not None


def _invalid(code: ErrorCode, detail: str) -> LocalProtocolError:
    return LocalProtocolError(code, detail)


def _check_job_id(job_id: str) -> None:
    if not isinstance(job_id, str) or not is_valid_job_id(job_id):
        raise _invalid(ErrorCode.INVALID_JOB_ID, "job_id must match [A-Za-z0-9._-]{1,64}")


def _check_text(name: str, value: str, *, allow_empty: bool = True, one_line: bool = False) -> None:
    if not isinstance(value, str):
        raise _invalid(ErrorCode.MALFORMED_FRAME, f"{name} must be text")
    if not allow_empty and not value:
        raise _invalid(ErrorCode.MALFORMED_FRAME, f"{name} must not be empty")
    if one_line and ("\n" in value or "\r" in value):
        raise _invalid(ErrorCode.MALFORMED_FRAME, f"{name} must be a single line")


class Message:
    """Base class of every data-channel message (text or binary)."""

    __slots__ = ()
    #: The frame type: the text before the first ``::`` (empty for binary frames).
    TYPE: ClassVar[str] = ""


# ---------------------------------------------------------------- client -> worker


@dataclass(frozen=True, slots=True)
class JobId(Message):
    """C->W ``JOB_ID::{job_id}``: names the next job (optional)."""

    TYPE: ClassVar[str] = "JOB_ID"
    job_id: str

    def __post_init__(self) -> None:
        _check_job_id(self.job_id)


@dataclass(frozen=True, slots=True)
class SharedInputPath(Message):
    """C->W ``SHARED_INPUT_PATH::{path}``: input relative to the shared root.

    The path is the rest of the frame and may contain ``::``. Its safety is decided
    by the worker's path validator, not here.
    """

    TYPE: ClassVar[str] = "SHARED_INPUT_PATH"
    path: str

    def __post_init__(self) -> None:
        _check_text("path", self.path, allow_empty=False)


@dataclass(frozen=True, slots=True)
class SharedOutputPath(Message):
    """C->W ``SHARED_OUTPUT_PATH::{path}``: output folder relative to the shared root."""

    TYPE: ClassVar[str] = "SHARED_OUTPUT_PATH"
    path: str

    def __post_init__(self) -> None:
        _check_text("path", self.path, allow_empty=False)


@dataclass(frozen=True, slots=True)
class JobStart(Message):
    """C->W ``JOB_START``; with ``legacy=True`` the earlier form ``SHARED_STORAGE_JOB::start``."""

    TYPE: ClassVar[str] = "JOB_START"
    LEGACY_FRAME: ClassVar[str] = "SHARED_STORAGE_JOB::start"
    legacy: bool = False


@dataclass(frozen=True, slots=True)
class JobCancel(Message):
    """C->W ``JOB_CANCEL``: terminate the running job (answered ``JOB_FAILED``)."""

    TYPE: ClassVar[str] = "JOB_CANCEL"


# ---------------------------------------------------------------- worker -> client


@dataclass(frozen=True, slots=True)
class PathValidated(Message):
    """W->C ``PATH_VALIDATED::input`` or ``PATH_VALIDATED::output``."""

    TYPE: ClassVar[str] = "PATH_VALIDATED"
    which: Literal["input", "output"]

    def __post_init__(self) -> None:
        if self.which not in ("input", "output"):
            raise _invalid(ErrorCode.MALFORMED_FRAME, "PATH_VALIDATED takes input or output")


@dataclass(frozen=True, slots=True)
class PathError(Message):
    """W->C ``PATH_ERROR::{reason}``; the reason quotes the path as the client sent it."""

    TYPE: ClassVar[str] = "PATH_ERROR"
    reason: str

    def __post_init__(self) -> None:
        _check_text("reason", self.reason, allow_empty=False)


@dataclass(frozen=True, slots=True)
class JobLog(Message):
    """W->C ``JOB_LOG::{line}``: one line the job printed (no line break inside)."""

    TYPE: ClassVar[str] = "JOB_LOG"
    line: str

    def __post_init__(self) -> None:
        _check_text("line", self.line, one_line=True)


@dataclass(frozen=True, slots=True)
class JobMetrics(Message):
    """W->C ``JOB_METRICS::{json}``: timings of one job.

    Attributes:
        validation_ms: time spent validating the input and output paths, milliseconds.
        file_access_ms: time spent opening and inspecting the input, milliseconds.
        run_s: time the job itself ran (extraction and command), seconds.
        total_s: from JOB_START to the result being durable, seconds.
    """

    TYPE: ClassVar[str] = "JOB_METRICS"
    FIELDS: ClassVar[tuple[str, ...]] = ("validation_ms", "file_access_ms", "run_s", "total_s")
    validation_ms: float
    file_access_ms: float
    run_s: float
    total_s: float

    def __post_init__(self) -> None:
        for name in self.FIELDS:
            value = getattr(self, name)
            try:
                number = float(value)
            except (TypeError, ValueError, OverflowError):
                number = math.nan
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (0 <= number < _MAX_MB)
            ):
                raise _invalid(ErrorCode.MALFORMED_FRAME, f"{name} must be a number in [0, 1e14)")
            object.__setattr__(self, name, round(number, 3))

    def as_dict(self) -> dict[str, float]:
        """The metrics as a plain dict (keys: :attr:`FIELDS`)."""
        return {name: getattr(self, name) for name in self.FIELDS}


@dataclass(frozen=True, slots=True)
class JobComplete(Message):
    """W->C ``JOB_COMPLETE::{job_id}::{output_path}::{file_count}::{total_mb}``.

    ``total_mb`` is bytes / 10^6 counted over the output folder, written with two
    decimals. ``output_path`` is relative to the shared root and may contain ``::``
    (the last two fields are parsed from the right).
    """

    TYPE: ClassVar[str] = "JOB_COMPLETE"
    job_id: str
    output_path: str
    file_count: int
    total_mb: float

    def __post_init__(self) -> None:
        _check_job_id(self.job_id)
        _check_text("output_path", self.output_path)
        if isinstance(self.file_count, bool) or not isinstance(self.file_count, int):
            raise _invalid(ErrorCode.MALFORMED_FRAME, "file_count must be an integer")
        if not 0 <= self.file_count < 10**15:
            raise _invalid(ErrorCode.MALFORMED_FRAME, "file_count out of range")
        mb = self.total_mb
        if isinstance(mb, bool) or not isinstance(mb, int | float) or not 0 <= mb < _MAX_MB:
            raise _invalid(ErrorCode.MALFORMED_FRAME, "total_mb must be a number >= 0")
        object.__setattr__(self, "total_mb", round(float(mb), 2))

    @staticmethod
    def mb_from_bytes(total_bytes: int) -> float:
        """Convert a byte count to MB (10^6 bytes), rounded to 2 decimals."""
        return round(total_bytes / 1_000_000, 2)


@dataclass(frozen=True, slots=True)
class JobFailed(Message):
    """W->C ``JOB_FAILED::{job_id}::{reason}``."""

    TYPE: ClassVar[str] = "JOB_FAILED"
    job_id: str
    reason: str

    def __post_init__(self) -> None:
        _check_job_id(self.job_id)
        _check_text("reason", self.reason, allow_empty=False)


@dataclass(frozen=True, slots=True)
class ProtocolErrorFrame(Message):
    """Either direction ``PROTOCOL_ERROR::{code}::{detail}``.

    ``code`` is an :class:`~protocol.errors.ErrorCode` value when we send it; when
    decoding, any upper-case code is accepted so newer peers can add codes.
    """

    TYPE: ClassVar[str] = "PROTOCOL_ERROR"
    code: str
    detail: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.code, str) or not _CODE_PATTERN.fullmatch(self.code):
            raise _invalid(ErrorCode.MALFORMED_FRAME, "code must match [A-Z][A-Z0-9_]{0,63}")
        _check_text("detail", self.detail)
        object.__setattr__(self, "code", str(self.code))


# ---------------------------------------------------------------- file transfer


def _check_sha256(value: str) -> str:
    if not isinstance(value, str) or not _SHA256_PATTERN.fullmatch(value):
        raise _invalid(ErrorCode.MALFORMED_FRAME, "sha256 must be 64 hexadecimal digits")
    return value.lower()


def _check_count(name: str, value: int, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value < 10**18:
        raise _invalid(ErrorCode.MALFORMED_FRAME, f"{name} must be an integer >= {minimum}")


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
        _check_text("name", self.name, allow_empty=False)
        _check_count("size", self.size)
        _check_count("chunk_size", self.chunk_size, minimum=1)
        object.__setattr__(self, "sha256", _check_sha256(self.sha256))


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
        _check_text("name", self.name, allow_empty=False, one_line=True)
        if SEP in self.name:
            raise _invalid(ErrorCode.MALFORMED_FRAME, "a legacy FILE_META name has no '::'")
        _check_count("size", self.size)
        _check_text("gui", self.gui, one_line=True)
        if ":" in self.gui:
            raise _invalid(ErrorCode.MALFORMED_FRAME, "gui has no ':'")


@dataclass(frozen=True, slots=True)
class FileReady(Message):
    """Receiver->sender ``FILE_READY::{offset}``: send from byte ``offset`` (0 = new)."""

    TYPE: ClassVar[str] = "FILE_READY"
    offset: int

    def __post_init__(self) -> None:
        _check_count("offset", self.offset)


@dataclass(frozen=True, slots=True)
class FileExists(Message):
    """Receiver->sender ``FILE_EXISTS::{sha256}``: the content is held; no bytes are sent."""

    TYPE: ClassVar[str] = "FILE_EXISTS"
    sha256: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", _check_sha256(self.sha256))


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
        _check_count("bytes_received", self.received)
        _check_count("size", self.size)


@dataclass(frozen=True, slots=True)
class FileReceived(Message):
    """Receiver->sender ``FILE_RECEIVED::{sha256}``: stored and verified."""

    TYPE: ClassVar[str] = "FILE_RECEIVED"
    sha256: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", _check_sha256(self.sha256))


@dataclass(frozen=True, slots=True)
class TransferError(Message):
    """Either direction ``TRANSFER_ERROR::{code}::{detail}``; code from TransferErrorCode."""

    TYPE: ClassVar[str] = "TRANSFER_ERROR"
    code: str
    detail: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.code, str) or not _CODE_PATTERN.fullmatch(self.code):
            raise _invalid(ErrorCode.MALFORMED_FRAME, "code must match [A-Z][A-Z0-9_]{0,63}")
        _check_text("detail", self.detail)
        object.__setattr__(self, "code", str(self.code))


@dataclass(frozen=True, slots=True)
class FileCancel(Message):
    """Either direction ``FILE_CANCEL``: stop the transfer; the partial data is kept."""

    TYPE: ClassVar[str] = "FILE_CANCEL"


@dataclass(frozen=True, slots=True)
class ResultsRequest(Message):
    """C->W ``RESULTS_REQUEST::{job_id}``: send the job's output folder as one ZIP."""

    TYPE: ClassVar[str] = "RESULTS_REQUEST"
    job_id: str

    def __post_init__(self) -> None:
        _check_job_id(self.job_id)


@dataclass(frozen=True, slots=True)
class ResultsViaStorage(Message):
    """C->W ``RESULTS_VIA_STORAGE``: upload the job's results ZIP to the storage service.

    Sent before (or while) the job runs; once it completes the worker answers
    ``RESULTS_STORED`` after ``JOB_COMPLETE``, or uploads anyway if the client has gone.
    """

    TYPE: ClassVar[str] = "RESULTS_VIA_STORAGE"


@dataclass(frozen=True, slots=True)
class ResultsStored(Message):
    """W->C ``RESULTS_STORED::{job_id}::{download_path}``: the results ZIP is uploaded.

    ``download_path`` is where the storage service serves it (``/download/{job_id}``);
    it is the rest of the frame and may contain ``::``.
    """

    TYPE: ClassVar[str] = "RESULTS_STORED"
    job_id: str
    download_path: str

    def __post_init__(self) -> None:
        _check_job_id(self.job_id)
        _check_text("download_path", self.download_path, allow_empty=False, one_line=True)


@dataclass(frozen=True, slots=True)
class Chunk(Message):
    """A binary frame: a chunk of file bytes (only valid inside a file transfer)."""

    data: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.data, bytes):
            raise _invalid(ErrorCode.MALFORMED_FRAME, "chunk data must be bytes")

    def __repr__(self) -> str:
        return f"Chunk(<{len(self.data)} bytes>)"


# ---------------------------------------------------------------- codec


def encode(message: Message) -> str | bytes:
    """Serialize a message to its frame: ``str`` for text frames, ``bytes`` for chunks.

    Raises:
        LocalProtocolError: ``message`` is not a protocol message.
    """
    match message:
        case Chunk(data=data):
            return data
        case JobId(job_id=job_id):
            return f"JOB_ID{SEP}{job_id}"
        case SharedInputPath(path=path) | SharedOutputPath(path=path):
            return f"{message.TYPE}{SEP}{path}"
        case JobStart(legacy=legacy):
            return JobStart.LEGACY_FRAME if legacy else JobStart.TYPE
        case JobCancel():
            return JobCancel.TYPE
        case PathValidated(which=which):
            return f"PATH_VALIDATED{SEP}{which}"
        case PathError(reason=reason):
            return f"PATH_ERROR{SEP}{reason}"
        case JobLog(line=line):
            return f"JOB_LOG{SEP}{line}"
        case JobMetrics():
            body = json.dumps(message.as_dict(), separators=(",", ":"))
            return f"JOB_METRICS{SEP}{body}"
        case JobComplete(job_id=job_id, output_path=out, file_count=count, total_mb=mb):
            return SEP.join(("JOB_COMPLETE", job_id, out, str(count), f"{mb:.2f}"))
        case JobFailed(job_id=job_id, reason=reason):
            return f"JOB_FAILED{SEP}{job_id}{SEP}{reason}"
        case ProtocolErrorFrame(code=code, detail=detail):
            return f"PROTOCOL_ERROR{SEP}{code}{SEP}{detail}"
        case FileMeta(name=name, size=size, sha256=sha, chunk_size=chunk):
            return SEP.join(("FILE_META", name, str(size), sha, str(chunk)))
        case FileMetaLegacy(name=name, size=size, gui=gui):
            return f"FILE_META{SEP}{name}:{size}:{gui}"
        case FileReady(offset=offset):
            return f"FILE_READY{SEP}{offset}"
        case FileExists(sha256=sha) | FileReceived(sha256=sha):
            return f"{message.TYPE}{SEP}{sha}"
        case EndOfFile() | FileCancel():
            return message.TYPE
        case FileProgress(received=received, size=size):
            return f"FILE_PROGRESS{SEP}{received}{SEP}{size}"
        case TransferError(code=code, detail=detail):
            return f"TRANSFER_ERROR{SEP}{code}{SEP}{detail}"
        case ResultsRequest(job_id=job_id):
            return f"RESULTS_REQUEST{SEP}{job_id}"
        case ResultsViaStorage():
            return ResultsViaStorage.TYPE
        case ResultsStored(job_id=job_id, download_path=download_path):
            return f"RESULTS_STORED{SEP}{job_id}{SEP}{download_path}"
    raise LocalProtocolError(ErrorCode.UNKNOWN_MESSAGE, f"cannot encode {type(message).__name__}")


_Parser = Callable[[str | None, Limits], Message]


def _no_fields(cls: type[Message]) -> _Parser:
    def parse(rest: str | None, limits: Limits) -> Message:
        if rest is not None:
            raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, f"{cls.TYPE} takes no fields")
        return cls()

    return parse


def _need(rest: str | None, type_: str) -> str:
    if rest is None:
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, f"{type_} needs fields")
    return rest


def _path(cls: type[SharedInputPath | SharedOutputPath]) -> _Parser:
    def parse(rest: str | None, limits: Limits) -> Message:
        path = _need(rest, cls.TYPE)
        if len(path.encode("utf-8", "surrogatepass")) > limits.max_path_bytes:
            raise RemoteProtocolError(
                ErrorCode.PATH_TOO_LONG, f"path longer than {limits.max_path_bytes} bytes"
            )
        return cls(path)

    return parse


def _parse_shared_storage_job(rest: str | None, limits: Limits) -> Message:
    if rest != "start":
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "SHARED_STORAGE_JOB takes 'start'")
    return JobStart(legacy=True)


def _parse_path_validated(rest: str | None, limits: Limits) -> Message:
    which = _need(rest, PathValidated.TYPE)
    if which == "input":
        return PathValidated("input")
    if which == "output":
        return PathValidated("output")
    raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "PATH_VALIDATED takes input or output")


def _parse_metrics(rest: str | None, limits: Limits) -> Message:
    try:
        data = json.loads(_need(rest, JobMetrics.TYPE))
    except (ValueError, RecursionError) as exc:
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "JOB_METRICS is not JSON") from exc
    if not isinstance(data, dict) or any(name not in data for name in JobMetrics.FIELDS):
        raise RemoteProtocolError(
            ErrorCode.MALFORMED_FRAME, f"JOB_METRICS needs {', '.join(JobMetrics.FIELDS)}"
        )
    return JobMetrics(**{name: data[name] for name in JobMetrics.FIELDS})


def _parse_complete(rest: str | None, limits: Limits) -> Message:
    job_id, sep, tail = _need(rest, JobComplete.TYPE).partition(SEP)
    parts = tail.rsplit(SEP, 2)
    if not sep or len(parts) != 3:
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "JOB_COMPLETE needs 4 fields")
    out, count, mb = parts
    if not _COUNT_PATTERN.fullmatch(count) or not _MB_PATTERN.fullmatch(mb):
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "bad file_count or total_mb")
    return JobComplete(job_id, out, int(count), float(mb))


def _parse_failed(rest: str | None, limits: Limits) -> Message:
    job_id, sep, reason = _need(rest, JobFailed.TYPE).partition(SEP)
    if not sep:
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "JOB_FAILED needs job_id and reason")
    return JobFailed(job_id, reason)


def _parse_results_stored(rest: str | None, limits: Limits) -> Message:
    job_id, sep, download_path = _need(rest, ResultsStored.TYPE).partition(SEP)
    if not sep:
        raise RemoteProtocolError(
            ErrorCode.MALFORMED_FRAME, "RESULTS_STORED needs job_id and download_path"
        )
    return ResultsStored(job_id, download_path)


def _parse_protocol_error(rest: str | None, limits: Limits) -> Message:
    code, _, detail = _need(rest, ProtocolErrorFrame.TYPE).partition(SEP)
    return ProtocolErrorFrame(code, detail)


def _count(text: str, name: str) -> int:
    if not _COUNT18_PATTERN.fullmatch(text):
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, f"{name} must be decimal digits")
    return int(text)


def _parse_file_meta(rest: str | None, limits: Limits) -> Message:
    body = _need(rest, FileMeta.TYPE)
    parts = body.rsplit(SEP, 3)
    if (
        len(parts) == 4
        and _COUNT18_PATTERN.fullmatch(parts[1])
        and _SHA256_PATTERN.fullmatch(parts[2])
        and _COUNT18_PATTERN.fullmatch(parts[3])
    ):
        name, size, sha, chunk = parts
        return FileMeta(name, int(size), sha, int(chunk))
    legacy = _LEGACY_META.fullmatch(body)
    if legacy is None:
        raise RemoteProtocolError(
            ErrorCode.MALFORMED_FRAME,
            "FILE_META is {name}::{size}::{sha256}::{chunk_size} (or {name}:{size}:{gui})",
        )
    return FileMetaLegacy(legacy["name"], int(legacy["size"]), legacy["gui"])


def _parse_progress(rest: str | None, limits: Limits) -> Message:
    received, sep, size = _need(rest, FileProgress.TYPE).partition(SEP)
    if not sep:
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "FILE_PROGRESS needs 2 fields")
    return FileProgress(_count(received, "bytes_received"), _count(size, "size"))


def _parse_transfer_error(rest: str | None, limits: Limits) -> Message:
    code, _, detail = _need(rest, TransferError.TYPE).partition(SEP)
    return TransferError(code, detail)


_PARSERS: dict[str, _Parser] = {
    JobId.TYPE: lambda rest, limits: JobId(_need(rest, JobId.TYPE)),
    SharedInputPath.TYPE: _path(SharedInputPath),
    SharedOutputPath.TYPE: _path(SharedOutputPath),
    JobStart.TYPE: _no_fields(JobStart),
    "SHARED_STORAGE_JOB": _parse_shared_storage_job,
    JobCancel.TYPE: _no_fields(JobCancel),
    PathValidated.TYPE: _parse_path_validated,
    PathError.TYPE: lambda rest, limits: PathError(_need(rest, PathError.TYPE)),
    JobLog.TYPE: lambda rest, limits: JobLog(_need(rest, JobLog.TYPE)),
    JobMetrics.TYPE: _parse_metrics,
    JobComplete.TYPE: _parse_complete,
    JobFailed.TYPE: _parse_failed,
    ProtocolErrorFrame.TYPE: _parse_protocol_error,
    FileMeta.TYPE: _parse_file_meta,
    FileReady.TYPE: lambda rest, limits: FileReady(_count(_need(rest, "FILE_READY"), "offset")),
    FileExists.TYPE: lambda rest, limits: FileExists(_need(rest, FileExists.TYPE)),
    EndOfFile.TYPE: _no_fields(EndOfFile),
    FileProgress.TYPE: _parse_progress,
    FileReceived.TYPE: lambda rest, limits: FileReceived(_need(rest, FileReceived.TYPE)),
    TransferError.TYPE: _parse_transfer_error,
    FileCancel.TYPE: _no_fields(FileCancel),
    ResultsRequest.TYPE: lambda rest, limits: ResultsRequest(_need(rest, ResultsRequest.TYPE)),
    ResultsViaStorage.TYPE: _no_fields(ResultsViaStorage),
    ResultsStored.TYPE: _parse_results_stored,
}

#: Every text frame type :func:`decode` understands.
FRAME_TYPES: frozenset[str] = frozenset(_PARSERS)


def decode(frame: str | bytes, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Parse one data-channel frame into a message.

    Args:
        frame: a text frame (``str``) or a binary frame (``bytes``).
        limits: the bounds to enforce.

    Returns:
        The message; a binary frame becomes :class:`Chunk`.

    Raises:
        RemoteProtocolError: the frame is too large (FRAME_TOO_LARGE), has an unknown
            type (UNKNOWN_MESSAGE), breaks its grammar (MALFORMED_FRAME,
            INVALID_JOB_ID) or has an over-long path (PATH_TOO_LONG). Nothing else is
            raised, for any input, in time linear in the input's length.
    """
    if isinstance(frame, bytes | bytearray | memoryview):
        data = bytes(frame)
        if len(data) > limits.max_binary_frame_bytes:
            raise RemoteProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"binary frame of {len(data)} bytes exceeds {limits.max_binary_frame_bytes}",
            )
        return Chunk(data)
    if not isinstance(frame, str):
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "a frame is text or bytes")
    # A character is at most 4 bytes of UTF-8: only measure exactly when it may matter.
    if len(frame) * 4 > limits.max_text_frame_bytes:
        size = len(frame.encode("utf-8", "surrogatepass"))
        if size > limits.max_text_frame_bytes:
            raise RemoteProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"text frame of {size} bytes exceeds {limits.max_text_frame_bytes}",
            )
    fields = frame.count(SEP) + 1
    if fields > limits.max_fields:
        raise RemoteProtocolError(
            ErrorCode.TOO_MANY_FIELDS, f"{fields} fields exceed {limits.max_fields}"
        )
    type_, sep, rest = frame.partition(SEP)
    parser = _PARSERS.get(type_)
    if parser is None:
        shown = type_[:32].encode("ascii", "backslashreplace").decode("ascii")
        raise RemoteProtocolError(ErrorCode.UNKNOWN_MESSAGE, f"unknown message type {shown!r}")
    try:
        return parser(rest if sep else None, limits)
    except LocalProtocolError as exc:
        raise exc.as_remote() from None
