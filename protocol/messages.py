"""Data-channel messages: one frozen, slotted, typed class per frame (sans-IO).

Every text frame is ``TYPE`` or ``TYPE::field::field...``: the type is the text before
the first ``::``. Binary frames carry file bytes (:class:`Chunk`). Each message is
validated when built: building an invalid message raises
:class:`~protocol.errors.LocalProtocolError` with the code a peer would get for the
same mistake. The wire form lives in :mod:`protocol.codec`.

Fields that may contain ``::`` (paths, reasons, log lines) are always the last
free-text field of their frame, or are delimited from the right by fields whose
grammar cannot contain ``::``, so every frame has exactly one parse.

Source: PROTOCOL.md section 2; the classes follow h11's events (frozen, slotted,
validated when built).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from protocol.errors import ErrorCode, LocalProtocolError, PathReason

if TYPE_CHECKING:
    from protocol.transfer_messages import TransferError

__all__ = [
    "JobCancel",
    "JobComplete",
    "JobFailed",
    "JobId",
    "JobLog",
    "JobMetrics",
    "JobStart",
    "Message",
    "PathError",
    "PathValidated",
    "ProtocolErrorFrame",
    "ResultsRequest",
    "ResultsStored",
    "ResultsViaStorage",
    "SharedInputPath",
    "SharedOutputPath",
    "is_valid_job_id",
]

#: The separator of text-frame fields.
SEP = "::"
#: The grammar of a job_id (use ``fullmatch``): 1-64 of ``[A-Za-z0-9._-]``, not only
#: dots (``.`` and ``..`` do not survive URL or path normalisation).
JOB_ID_PATTERN = re.compile(r"(?!\.+\Z)[A-Za-z0-9._-]{1,64}")
#: The grammar of a PROTOCOL_ERROR or TRANSFER_ERROR code (use ``fullmatch``).
CODE_PATTERN = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
#: A sha256 on the wire: 64 hexadecimal digits, either case (use ``fullmatch``).
SHA256_PATTERN = re.compile(r"[0-9a-fA-F]{64}")
#: A storage-service download capability (use ``fullmatch``): never contains ``::``.
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~+/=-]{1,1024}")
#: Upper bound (exclusive) of MB counts and timings, so every number has a short form.
MAX_MB = 1e14


def is_valid_job_id(job_id: str) -> bool:
    """True when ``job_id`` matches ``[A-Za-z0-9._-]{1,64}`` and is not only dots."""
    return JOB_ID_PATTERN.fullmatch(job_id) is not None


def invalid(code: ErrorCode, detail: str) -> LocalProtocolError:
    """The error a message class raises for a field outside its grammar."""
    return LocalProtocolError(code, detail)


def check_job_id(job_id: str) -> None:
    """Refuse (INVALID_JOB_ID) a job_id outside ``[A-Za-z0-9._-]{1,64}``."""
    if not isinstance(job_id, str) or not is_valid_job_id(job_id):
        raise invalid(
            ErrorCode.INVALID_JOB_ID, "job_id must match [A-Za-z0-9._-]{1,64}, not only dots"
        )


def check_text(name: str, value: str, *, allow_empty: bool = True, one_line: bool = False) -> None:
    """Refuse (MALFORMED_FRAME) a field that is not text, empty when not allowed, or
    more than one line when one is required."""
    if not isinstance(value, str):
        raise invalid(ErrorCode.MALFORMED_FRAME, f"{name} must be text")
    if not allow_empty and not value:
        raise invalid(ErrorCode.MALFORMED_FRAME, f"{name} must not be empty")
    if one_line and ("\n" in value or "\r" in value):
        raise invalid(ErrorCode.MALFORMED_FRAME, f"{name} must be a single line")


def check_code(frame: ProtocolErrorFrame | TransferError) -> None:
    """Refuse (MALFORMED_FRAME) an error frame whose code breaks the code grammar or
    whose detail is not text; keep the code as a plain ``str``."""
    if not isinstance(frame.code, str) or not CODE_PATTERN.fullmatch(frame.code):
        raise invalid(ErrorCode.MALFORMED_FRAME, "code must match [A-Z][A-Z0-9_]{0,63}")
    check_text("detail", frame.detail)
    object.__setattr__(frame, "code", str(frame.code))


def check_sha256(value: str) -> str:
    """``value`` as a sha256 in lowercase, or LocalProtocolError MALFORMED_FRAME."""
    if not isinstance(value, str) or not SHA256_PATTERN.fullmatch(value):
        raise invalid(ErrorCode.MALFORMED_FRAME, "sha256 must be 64 hexadecimal digits")
    return value.lower()


def check_count(name: str, value: int, minimum: int = 0) -> None:
    """Refuse (MALFORMED_FRAME) a count that is not an integer in ``[minimum, 10^18)``."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value < 10**18:
        raise invalid(ErrorCode.MALFORMED_FRAME, f"{name} must be an integer >= {minimum}")


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
        check_job_id(self.job_id)


@dataclass(frozen=True, slots=True)
class SharedInputPath(Message):
    """C->W ``SHARED_INPUT_PATH::{path}``: input relative to the shared root.

    The path is the rest of the frame and may contain ``::``. Its safety is decided
    by the worker's path validator, not here.
    """

    TYPE: ClassVar[str] = "SHARED_INPUT_PATH"
    path: str

    def __post_init__(self) -> None:
        check_text("path", self.path, allow_empty=False)


@dataclass(frozen=True, slots=True)
class SharedOutputPath(Message):
    """C->W ``SHARED_OUTPUT_PATH::{path}``: output folder relative to the shared root."""

    TYPE: ClassVar[str] = "SHARED_OUTPUT_PATH"
    path: str

    def __post_init__(self) -> None:
        check_text("path", self.path, allow_empty=False)


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
            raise invalid(ErrorCode.MALFORMED_FRAME, "PATH_VALIDATED takes input or output")


@dataclass(frozen=True, slots=True)
class PathError(Message):
    """W->C ``PATH_ERROR::{reason}: {path}``, the path quoted as the client sent it.

    ``reason`` holds the whole text after ``PATH_ERROR::``; a worker always sends a
    :class:`~protocol.errors.PathReason` and the path (:meth:`of`), and other text from
    a peer is accepted (:attr:`kind` is then None).
    """

    TYPE: ClassVar[str] = "PATH_ERROR"
    reason: str

    def __post_init__(self) -> None:
        check_text("reason", self.reason, allow_empty=False)

    @classmethod
    def of(cls, reason: PathReason, path: str) -> PathError:
        """The frame for ``reason`` quoting ``path`` (as the client sent it)."""
        return cls(reason.quote(path))

    @property
    def kind(self) -> PathReason | None:
        """The reason's :class:`~protocol.errors.PathReason`, or None for free text."""
        for reason in PathReason:
            if self.reason.startswith(f"{reason.value}: ") or self.reason == reason.value:
                return reason
        return None

    @property
    def path(self) -> str | None:
        """The quoted path when the reason is a known :class:`PathReason`, else None."""
        kind = self.kind
        return None if kind is None else self.reason[len(kind.value) + 2 :]


@dataclass(frozen=True, slots=True)
class JobLog(Message):
    """W->C ``JOB_LOG::{line}``: one line the job printed (no line break inside)."""

    TYPE: ClassVar[str] = "JOB_LOG"
    line: str

    def __post_init__(self) -> None:
        check_text("line", self.line, one_line=True)


@dataclass(frozen=True, slots=True)
class JobMetrics(Message):
    """W->C ``JOB_METRICS::{json}``: timings of one job.

    Attributes:
        validation_ms: time spent validating the input and output paths, milliseconds.
        file_access_ms: time spent opening and inspecting the input, milliseconds.
        run_s: time the job itself ran (extraction and command), seconds.
        total_s: from JOB_START to the result being durable, seconds.
        road: (optional) how the job's input arrived: one of :attr:`ROADS` (``shared``,
            ``relay``, ``channel``, ``stored`` when dedupe moved no byte,
            ``relay+channel`` after a failover); None when not said (earlier workers).
        transfer_mb_s: (optional) plaintext MB (10^6 bytes) moved per second from
            FILE_META to FILE_RECEIVED (0 for the shared road); None when not said.
    """

    TYPE: ClassVar[str] = "JOB_METRICS"
    FIELDS: ClassVar[tuple[str, ...]] = ("validation_ms", "file_access_ms", "run_s", "total_s")
    #: The optional fields, in the JSON after :attr:`FIELDS` when set.
    OPTIONAL: ClassVar[tuple[str, ...]] = ("road", "transfer_mb_s")
    #: The values of ``road``.
    ROADS: ClassVar[frozenset[str]] = frozenset(
        ("shared", "relay", "channel", "stored", "relay+channel")
    )
    validation_ms: float
    file_access_ms: float
    run_s: float
    total_s: float
    road: str | None = None
    transfer_mb_s: float | None = None

    def __post_init__(self) -> None:
        for name in self.FIELDS:
            object.__setattr__(self, name, _metric(name, getattr(self, name)))
        if self.transfer_mb_s is not None:
            object.__setattr__(self, "transfer_mb_s", _metric("transfer_mb_s", self.transfer_mb_s))
        if self.road is not None and (
            not isinstance(self.road, str) or self.road not in self.ROADS
        ):
            raise invalid(ErrorCode.MALFORMED_FRAME, f"road is one of {sorted(self.ROADS)}")

    def as_dict(self) -> dict[str, float]:
        """The numbers as a plain dict (keys: :attr:`FIELDS`, and ``transfer_mb_s`` when
        set; ``road`` is text: read it from :attr:`road`)."""
        numbers = {name: getattr(self, name) for name in self.FIELDS}
        if self.transfer_mb_s is not None:
            numbers["transfer_mb_s"] = self.transfer_mb_s
        return numbers

    def wire_dict(self) -> dict[str, float | str]:
        """The JSON object of the frame: :attr:`FIELDS`, then the optional fields that are
        set (so an earlier peer's 4-field JSON and ours decode alike)."""
        wire: dict[str, float | str] = {name: getattr(self, name) for name in self.FIELDS}
        if self.road is not None:
            wire["road"] = self.road
        if self.transfer_mb_s is not None:
            wire["transfer_mb_s"] = self.transfer_mb_s
        return wire


def _metric(name: str, value: object) -> float:
    """``value`` as a number in [0, 1e14) rounded to 3 places, or MALFORMED_FRAME."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0 <= number < MAX_MB):
        raise invalid(ErrorCode.MALFORMED_FRAME, f"{name} must be a number in [0, 1e14)")
    return round(number, 3)


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
        check_job_id(self.job_id)
        check_text("output_path", self.output_path)
        if isinstance(self.file_count, bool) or not isinstance(self.file_count, int):
            raise invalid(ErrorCode.MALFORMED_FRAME, "file_count must be an integer")
        if not 0 <= self.file_count < 10**15:
            raise invalid(ErrorCode.MALFORMED_FRAME, "file_count out of range")
        mb = self.total_mb
        if isinstance(mb, bool) or not isinstance(mb, int | float) or not 0 <= mb < MAX_MB:
            raise invalid(ErrorCode.MALFORMED_FRAME, "total_mb must be a number >= 0")
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
        check_job_id(self.job_id)
        check_text("reason", self.reason, allow_empty=False)


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
        check_code(self)


@dataclass(frozen=True, slots=True)
class ResultsRequest(Message):
    """C->W ``RESULTS_REQUEST::{job_id}``: send the job's output folder as one ZIP."""

    TYPE: ClassVar[str] = "RESULTS_REQUEST"
    job_id: str

    def __post_init__(self) -> None:
        check_job_id(self.job_id)


@dataclass(frozen=True, slots=True)
class ResultsViaStorage(Message):
    """C->W ``RESULTS_VIA_STORAGE``: upload the job's results ZIP to the storage service.

    Sent before (or while) the job runs; once it completes the worker answers
    ``RESULTS_STORED`` after ``JOB_COMPLETE``, or uploads anyway if the client has gone.
    """

    TYPE: ClassVar[str] = "RESULTS_VIA_STORAGE"


@dataclass(frozen=True, slots=True)
class ResultsStored(Message):
    """W->C ``RESULTS_STORED::{job_id}::{download_path}::{sha256}::{size}::{token}``: the
    results ZIP is uploaded to the storage service.

    ``download_path`` is where the service serves it (``/download/{job_id}``); it may
    contain ``::`` (the last three fields are parsed from the right). ``sha256`` and
    ``size`` (bytes) are the stored ZIP's; ``token`` is the download capability the
    service signed for the job's owner (:data:`TOKEN_PATTERN`). The earlier form
    ``RESULTS_STORED::{job_id}::{download_path}`` (no sha256, size or token) is still
    understood; all three are then None.
    """

    TYPE: ClassVar[str] = "RESULTS_STORED"
    job_id: str
    download_path: str
    sha256: str | None = None
    size: int | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        check_job_id(self.job_id)
        check_text("download_path", self.download_path, allow_empty=False, one_line=True)
        given = (self.sha256 is not None, self.size is not None, self.token is not None)
        if any(given) and not all(given):
            raise invalid(ErrorCode.MALFORMED_FRAME, "sha256, size and token go together")
        if self.sha256 is not None:
            object.__setattr__(self, "sha256", check_sha256(self.sha256))
            check_count("size", self.size)  # type: ignore[arg-type]
            if not isinstance(self.token, str) or not TOKEN_PATTERN.fullmatch(self.token):
                raise invalid(
                    ErrorCode.MALFORMED_FRAME, "token must match [A-Za-z0-9._~+/=-]{1,1024}"
                )
