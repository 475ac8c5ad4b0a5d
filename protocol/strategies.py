"""Hypothesis strategies for the data-channel protocol and the signaling frames.

A public API for anyone who implements a peer (a client, a worker, a proxy) and wants
to fuzz it against this protocol: valid messages of every type, their encoded frames,
frames that a conforming peer must refuse, whole valid exchanges in both directions,
and the JSON signaling frames.

Everything here is sans-IO: it imports hypothesis, the standard library and the
``protocol`` modules only. Large values (64 KiB frames, 4 KiB paths, 256 KiB chunks)
are built by repeating a small drawn seed, so generation stays fast and within
hypothesis' per-example budget.

Example::

    from hypothesis import given
    from protocol import decode, encode
    from protocol.strategies import messages, malformed_frames

    @given(messages())
    def test_round_trip(message):
        assert decode(encode(message)) == message

Every strategy that produces data-channel frames takes ``limits`` (default
:data:`~protocol.messages.DEFAULT_LIMITS`) and stays within it (valid frames) or
breaks it on purpose (malformed frames).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Callable
from typing import Any, Literal

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from protocol.codec import FRAME_TYPES, encode
from protocol.errors import ErrorCode, TransferErrorCode
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.messages import (
    JOB_ID_PATTERN,
    SEP,
    Chunk,
    EndOfFile,
    FileCancel,
    FileExists,
    FileMeta,
    FileMetaLegacy,
    FileProgress,
    FileReady,
    FileReceived,
    JobCancel,
    JobComplete,
    JobFailed,
    JobId,
    JobLog,
    JobMetrics,
    JobStart,
    Message,
    PathError,
    PathValidated,
    ProtocolErrorFrame,
    ResultsRequest,
    ResultsStored,
    ResultsViaStorage,
    SharedInputPath,
    SharedOutputPath,
    TransferError,
)
from protocol.signaling import (
    DEFAULT_MAX_FRAME_BYTES,
    MAX_METADATA_BYTES,
    PEER_ID_PATTERN,
    Answer,
    Candidate,
    ClientFrame,
    ErrorFrame,
    ListPeers,
    Offer,
    PeerInfo,
    Peers,
    Register,
    Registered,
    RelayedAnswer,
    RelayedCandidate,
    RelayedOffer,
    ServerFrame,
    dump_frame,
)
from protocol.signaling import ErrorCode as SignalingErrorCode
from protocol.transfer import check_name

__all__ = [
    "C2W",
    "EXCHANGE_KINDS",
    "MESSAGE_STRATEGIES",
    "PATH_ERROR_PREFIXES",
    "W2C",
    "chunks",
    "client_messages",
    "client_signaling_frames",
    "end_of_files",
    "exchanges",
    "file_cancels",
    "file_exists_messages",
    "file_metas",
    "file_names",
    "file_progresses",
    "file_ready_messages",
    "file_received_messages",
    "frames",
    "free_text",
    "job_cancels",
    "job_completes",
    "job_failed_messages",
    "job_id_messages",
    "job_ids",
    "job_logs",
    "job_metrics",
    "job_starts",
    "json_values",
    "legacy_file_metas",
    "malformed_frames",
    "malformed_frames_with_codes",
    "malformed_signaling_frames",
    "malformed_signaling_frames_with_codes",
    "messages",
    "path_errors",
    "path_validated_messages",
    "paths",
    "peer_ids",
    "protocol_error_frames",
    "results_requests",
    "results_stored_messages",
    "results_via_storage_messages",
    "server_signaling_frames",
    "sha256_hex",
    "shared_input_paths",
    "shared_output_paths",
    "signaling_frames",
    "transfer_errors",
    "worker_messages",
]

#: Direction of a frame in an exchange: client to worker, or worker to client.
Direction = Literal["C->W", "W->C"]
C2W: Direction = "C->W"
W2C: Direction = "W->C"

#: One exchange: the frames of a conversation in the order they cross the channel.
Exchange = list[tuple[Direction, str | bytes]]

#: The kinds :func:`exchanges` can generate.
EXCHANGE_KINDS: tuple[str, ...] = (
    "shared_job",
    "transfer",
    "resume",
    "dedupe",
    "results",
    "cancel",
    "error",
    "legacy",
)

#: The reason prefixes of ``PATH_ERROR::{prefix}: {path}`` (README, "Data-channel protocol").
PATH_ERROR_PREFIXES: tuple[str, ...] = (
    "Path outside shared storage",
    "Input path does not exist",
    "File not found",
    "Permission denied",
    "File corrupted or invalid format",
    "Not a directory",
)

_MAX_COUNT = 10**18 - 1  # the largest value of a {1,18}-digit count field
_MAX_NAME_BYTES = 255  # the receiver's bound on a base name (protocol.transfer.check_name)
_FIELDLESS = ("JOB_START", "JOB_CANCEL", "END_OF_FILE", "FILE_CANCEL", "RESULTS_VIA_STORAGE")
_JOBS_DIR = ".rtc-jobs"
_DRIVE = re.compile(r"[A-Za-z]:")


# ===================================================================== helpers


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _fit(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` that is at most ``max_bytes`` of UTF-8."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= max_bytes:
        return text
    return data[: max(0, max_bytes)].decode("utf-8", "ignore")


def _fill(seed: str, n_bytes: int, pad: str = "x") -> str:
    """``seed`` repeated to exactly ``n_bytes`` of UTF-8 (topped up with ``pad``); empty
    for ``n_bytes <= 0``."""
    seed = seed or pad
    text = _fit(seed * (n_bytes // max(1, _utf8_len(seed)) + 1), n_bytes)
    return text + pad * (n_bytes - _utf8_len(text))


def _sized(
    base: SearchStrategy[str], min_bytes: int, max_bytes: int, *, sep: str = ""
) -> SearchStrategy[str]:
    """``base`` clamped to [min_bytes, max_bytes] bytes of UTF-8, mixed with long values
    (a drawn seed repeated to a drawn length, and to exactly ``max_bytes``)."""
    if max_bytes < min_bytes:
        raise ValueError(f"max_bytes {max_bytes} < min_bytes {min_bytes}")

    def clamp(text: str) -> str:
        text = _fit(text, max_bytes)
        return text if _utf8_len(text) >= min_bytes else _fill(text + sep, min_bytes)

    clamped = base.map(clamp)
    return st.one_of(
        clamped,
        clamped,
        clamped,
        st.builds(lambda s, n: _fill(s + sep, n), base, st.integers(min_bytes, max_bytes)),
        base.map(lambda s: _fill(s + sep, max_bytes)),
    )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _repeat_bytes(seed: bytes, n: int) -> bytes:
    seed = seed or b"\x00"
    return (seed * (n // len(seed) + 1))[:n]


def _thin(text: str, max_seps: int) -> str:
    """``text`` with every ``::`` after the first ``max_seps`` turned into ``--``: at most
    ``max_seps`` separators, and the same length."""
    parts = text.split(SEP)
    keep = max(0, max_seps) + 1
    if len(parts) <= keep:
        return text
    return SEP.join(parts[:keep]) + "--" + "--".join(parts[keep:])


def _seps(limits: Limits, fields: int) -> int:
    """The ``::`` a free field may hold in a frame of ``fields`` fields of its own, so
    that the frame stays within ``limits.max_fields``."""
    return limits.max_fields - fields


# ===================================================================== field values

_LINE_CHARS = st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp"))
_TEXT_PIECES = (
    ":",
    "::",
    ":::",
    " ",
    "  ",
    "\t",
    "-",
    "_",
    ".",
    "é",
    "ß",
    "ü",
    "中文",
    "Ω",
    "😀",
    "\u200b",
    "\u202e",
    "a",
    "Z",
    "0",
    "9",
    "{",
    "}",
    "%s",
    "\\",
    "/",
)
_NAME_PIECES = (
    "train",
    "data",
    ".zip",
    ".tar.gz",
    "v2",
    "résumé",
    "中文",
    "😀",
    "Ω",
    "ß",
    " ",
    "-",
    "_",
    ".",
    "::",
    ":",
    "x::y",
    "(1)",
    "∕",
    "⁄",
    "．",
)
_PATH_COMPONENTS = (
    "inputs",
    "outputs",
    "train.zip",
    "run 1",
    "a::b",
    "::",
    ":",
    "x:y",
    "data::v2",
    "ü",
    "中文.zip",
    "😀",
    "with space",
    " ",
    "résumé.pdf",
    "Ω",
    ".hidden",
    "a.b.c",
)


_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
_JOB_IDS = st.one_of(
    st.text(st.sampled_from(_ID_CHARS), min_size=1, max_size=64),
    st.sampled_from(["job-0123456789ab", "a", "A" * 64, ".", "..", "-", "_", "0" * 64]),
)
#: One character of single-line text: often a separator, a space or a multi-byte one.
_LINE_CHAR = st.one_of(
    st.sampled_from(list(":: \t-_.éßü中Ω😀\u200b\u202eaZ09{}%/\\")),
    _LINE_CHARS,
)
_FREE_BASE = st.one_of(
    st.lists(st.sampled_from(_TEXT_PIECES), max_size=12).map("".join),
    st.text(_LINE_CHAR, max_size=24),
)
_COMPONENT = st.one_of(
    st.sampled_from(_PATH_COMPONENTS),
    st.text(
        st.one_of(
            st.sampled_from(list("::  .-_éü中😀")), _LINE_CHARS.filter(lambda c: c not in "/\\")
        ),
        min_size=1,
        max_size=12,
    ).filter(lambda c: c not in (".", "..")),
)
_PATH_BASE = st.lists(_COMPONENT, min_size=1, max_size=5).map("/".join)
_NAME_BASE = st.lists(
    st.one_of(
        st.sampled_from(_NAME_PIECES),
        st.text(_LINE_CHARS.filter(lambda c: c not in "/\\"), min_size=1, max_size=6),
    ),
    min_size=1,
    max_size=5,
).map(lambda parts: "f" + "".join(parts))


def job_ids() -> SearchStrategy[str]:
    """Valid job ids: ``[A-Za-z0-9._-]{1,64}``, including ``.``, ``..``, ``-`` and the
    64-character maximum."""
    return _JOB_IDS


def _job_id_hex() -> SearchStrategy[str]:
    """A job id as the worker generates it: ``job-`` and 12 hex digits."""
    return st.binary(min_size=6, max_size=6).map(lambda b: f"job-{b.hex()}")


def free_text(
    *, min_bytes: int = 1, max_bytes: int = 512, max_separators: int | None = None
) -> SearchStrategy[str]:
    """Single-line text (reasons, log lines, details) of ``min_bytes`` to ``max_bytes``
    bytes of UTF-8: ``:``, ``::``, spaces, tabs, unicode (no control characters other
    than tab, no line or paragraph separators, no surrogates); sometimes exactly
    ``max_bytes`` long. At most ``max_separators`` ``::`` if given (the others become
    ``--``)."""
    texts = _sized(_FREE_BASE, min_bytes, max_bytes)
    if max_separators is None:
        return texts
    return texts.map(lambda text: _thin(text, max_separators))


def paths(
    *, limits: Limits = DEFAULT_LIMITS, min_bytes: int = 1, max_bytes: int | None = None
) -> SearchStrategy[str]:
    """Relative paths as a client sends them: components joined by ``/`` holding ``:``,
    ``::``, spaces and unicode (no ``..``, no leading ``/``, no control characters, every
    component at most a few dozen bytes); from ``min_bytes`` up to ``max_bytes``
    (default and cap: ``limits.max_path_bytes``), sometimes exactly the maximum. At most
    ``limits.max_fields - 5`` ``::`` (the others become ``--``), so that every frame
    carrying a path, JOB_COMPLETE and its five fields included, stays within
    ``limits.max_fields``."""
    cap = limits.max_path_bytes if max_bytes is None else min(max_bytes, limits.max_path_bytes)
    max_seps = _seps(limits, 5)
    return (
        _sized(_PATH_BASE, min_bytes, cap, sep="/")
        .map(lambda path: _thin(path, max_seps))
        .filter(_plain_path)
    )


def _plain_path(path: str) -> bool:
    """A path a worker accepts lexically: not empty or absolute, no drive prefix, and no
    component that is (or whose NFKC form is) ``.`` or ``..`` or holds a separator."""
    if not path or path.startswith("/") or _DRIVE.match(path):
        return False
    for part in path.split("/"):
        folded = unicodedata.normalize("NFKC", part)
        if folded in (".", "..") or "/" in folded or "\\" in folded:
            return False
    return True


def sha256_hex(*, allow_upper: bool = False) -> SearchStrategy[str]:
    """64 hexadecimal digits (lowercase; mixed case too with ``allow_upper``)."""
    digests = st.binary(min_size=32, max_size=32).map(bytes.hex)
    if not allow_upper:
        return digests
    return st.one_of(
        digests,
        digests.map(str.upper),
        st.tuples(digests, st.integers(0, 2**64 - 1)).map(
            lambda pair: "".join(
                c.upper() if (pair[1] >> (i % 64)) & 1 else c for i, c in enumerate(pair[0])
            )
        ),
    )


def file_names(*, min_bytes: int = 1, max_bytes: int = _MAX_NAME_BYTES) -> SearchStrategy[str]:
    """Base names a receiver accepts (:func:`protocol.transfer.check_name` passes):
    unicode, spaces, ``:`` and ``::`` inside, from ``min_bytes`` to ``max_bytes`` (at most
    255) bytes of UTF-8, sometimes exactly ``max_bytes`` long."""
    max_bytes = min(max_bytes, _MAX_NAME_BYTES)
    names = _sized(_NAME_BASE, max(1, min_bytes), max_bytes)
    samples = ["train.zip", "v2::g.zip", "résumé 2.pdf", "中文 文件.zip", "..."]
    fitting = [n for n in samples if _utf8_len(n) <= max_bytes]
    if min_bytes <= 1 and fitting:
        names = st.one_of(st.sampled_from(fitting), names)
    return names.filter(lambda name: check_name(name) is None)


def _counts(maximum: int = _MAX_COUNT) -> SearchStrategy[int]:
    return st.one_of(
        st.integers(0, min(maximum, 1 << 20)),
        st.integers(0, maximum),
        st.sampled_from([0, 1, maximum]),
    )


# ===================================================================== one per message


def job_id_messages() -> SearchStrategy[JobId]:
    """``JOB_ID::{job_id}`` (C->W)."""
    return st.builds(JobId, job_ids())


def shared_input_paths(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[SharedInputPath]:
    """``SHARED_INPUT_PATH::{path}`` (C->W), paths up to ``limits.max_path_bytes``."""
    return st.builds(SharedInputPath, paths(limits=limits))


def shared_output_paths(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[SharedOutputPath]:
    """``SHARED_OUTPUT_PATH::{path}`` (C->W), paths up to ``limits.max_path_bytes``."""
    return st.builds(SharedOutputPath, paths(limits=limits))


def job_starts() -> SearchStrategy[JobStart]:
    """``JOB_START`` or the earlier ``SHARED_STORAGE_JOB::start`` (C->W)."""
    return st.builds(JobStart, legacy=st.booleans())


def job_cancels() -> SearchStrategy[JobCancel]:
    """``JOB_CANCEL`` (C->W)."""
    return st.just(JobCancel())


def path_validated_messages() -> SearchStrategy[PathValidated]:
    """``PATH_VALIDATED::input`` or ``PATH_VALIDATED::output`` (W->C)."""
    return st.sampled_from([PathValidated("input"), PathValidated("output")])


def _budget(limits: Limits, fixed: int) -> int:
    """Bytes left for a free field once ``fixed`` bytes of the frame are spoken for."""
    return max(1, limits.max_text_frame_bytes - fixed)


def path_errors(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[PathError]:
    """``PATH_ERROR::{reason}`` (W->C): a known prefix quoting a path, or free text;
    sometimes filling the frame to ``limits.max_text_frame_bytes``."""
    budget = _budget(limits, len("PATH_ERROR::"))
    quoted = st.builds(
        lambda prefix, path: _fit(f"{prefix}: {path}", budget),
        st.sampled_from(PATH_ERROR_PREFIXES),
        paths(limits=limits),
    )
    free = free_text(max_bytes=budget, max_separators=_seps(limits, 2))
    return st.builds(PathError, st.one_of(quoted, free))


def job_logs(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[JobLog]:
    """``JOB_LOG::{line}`` (W->C), one line, sometimes filling the frame; empty lines too."""
    budget = _budget(limits, len("JOB_LOG::"))
    line = free_text(max_bytes=budget, max_separators=_seps(limits, 2))
    return st.builds(JobLog, st.one_of(st.just(""), line))


def _metric_values() -> SearchStrategy[float | int]:
    return st.one_of(
        st.floats(0, 1e14, exclude_max=True, allow_nan=False, allow_infinity=False),
        st.integers(0, 10**13),
        st.sampled_from([0.0, 0.001, 0.0005, 99999999999999.98]),
    )


def job_metrics() -> SearchStrategy[JobMetrics]:
    """``JOB_METRICS::{json}`` (W->C): four numbers in [0, 1e14) (ms and s)."""
    return st.builds(JobMetrics, *[_metric_values() for _ in JobMetrics.FIELDS])


def job_completes(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[JobComplete]:
    """``JOB_COMPLETE::{job_id}::{output_path}::{file_count}::{total_mb}`` (W->C): output
    paths holding ``::`` up to the path limit, counts up to 10^15 - 1, total_mb in [0, 1e14)."""
    fixed = len("JOB_COMPLETE::") + 64 + 2 + 2 + 15 + 2 + 17
    cap = min(limits.max_path_bytes, _budget(limits, fixed))
    return st.builds(
        JobComplete,
        st.one_of(job_ids(), _job_id_hex()),
        st.one_of(
            paths(limits=limits, max_bytes=cap),
            _job_id_hex().map(lambda j: f"{_JOBS_DIR}/{j}/output"),
        ),
        st.one_of(st.integers(0, 10**15 - 1), st.sampled_from([0, 1, 10**15 - 1])),
        st.one_of(
            st.floats(0, 1e14, exclude_max=True, allow_nan=False, allow_infinity=False),
            st.sampled_from([0.0, 0.005, 0.01, 12.345, 99999999999999.98]),
        ),
    )


def job_failed_messages(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[JobFailed]:
    """``JOB_FAILED::{job_id}::{reason}`` (W->C), reasons holding ``::``."""
    budget = _budget(limits, len("JOB_FAILED::") + 64 + 2)
    reasons = st.one_of(
        st.sampled_from(["cancelled", "Job command exited with code 2"]),
        free_text(max_bytes=budget, max_separators=_seps(limits, 3)),
    )
    return st.builds(JobFailed, job_ids(), reasons)


def _codes(known: list[str]) -> SearchStrategy[str]:
    return st.one_of(st.sampled_from(known), st.from_regex(r"[A-Z][A-Z0-9_]{0,63}", fullmatch=True))


def protocol_error_frames(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[ProtocolErrorFrame]:
    """``PROTOCOL_ERROR::{code}::{detail}``: known and future upper-case codes, details
    holding ``::`` (or empty)."""
    budget = _budget(limits, len("PROTOCOL_ERROR::") + 64 + 2)
    return st.builds(
        ProtocolErrorFrame,
        _codes([c.value for c in ErrorCode]),
        st.one_of(st.just(""), free_text(max_bytes=budget, max_separators=_seps(limits, 3))),
    )


def file_metas(
    *,
    limits: Limits = DEFAULT_LIMITS,
    names: SearchStrategy[str] | None = None,
    max_size: int = _MAX_COUNT,
    max_chunk_size: int = _MAX_COUNT,
) -> SearchStrategy[FileMeta]:
    """``FILE_META::{name}::{size}::{sha256}::{chunk_size}``: names from
    :func:`file_names` (or ``names``), sizes up to ``max_size``, chunk sizes 1 to
    ``max_chunk_size``, sha256 in either case (it is kept lowercase)."""
    budget = _budget(limits, len("FILE_META::") + 3 * 2 + 18 + 64 + 18)
    return st.builds(
        FileMeta,
        (file_names(max_bytes=budget) if names is None else names).map(
            lambda name: _thin(name, _seps(limits, 5))
        ),
        _counts(max_size),
        sha256_hex(allow_upper=True),
        st.one_of(st.integers(1, min(max_chunk_size, 1 << 18)), st.integers(1, max_chunk_size)),
    )


def legacy_file_metas(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[FileMetaLegacy]:
    """The earlier ``FILE_META::{name}:{size}:{gui}``: names without ``::``, guis without
    ``:`` (possibly empty)."""
    gui = st.text(
        st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp"), exclude_characters=":"),
        max_size=16,
    )
    budget = _budget(limits, len("FILE_META::") + 2 + 18 + 16 * 4)
    names = file_names(max_bytes=budget).filter(lambda n: SEP not in n)
    return st.builds(FileMetaLegacy, names, _counts(), gui)


def file_ready_messages() -> SearchStrategy[FileReady]:
    """``FILE_READY::{offset}``, offsets 0 to 10^18 - 1."""
    return st.builds(FileReady, _counts())


def file_exists_messages() -> SearchStrategy[FileExists]:
    """``FILE_EXISTS::{sha256}``."""
    return st.builds(FileExists, sha256_hex(allow_upper=True))


def end_of_files() -> SearchStrategy[EndOfFile]:
    """``END_OF_FILE``."""
    return st.just(EndOfFile())


def file_progresses() -> SearchStrategy[FileProgress]:
    """``FILE_PROGRESS::{bytes_received}::{size}``."""
    return st.builds(FileProgress, _counts(), _counts())


def file_received_messages() -> SearchStrategy[FileReceived]:
    """``FILE_RECEIVED::{sha256}``."""
    return st.builds(FileReceived, sha256_hex(allow_upper=True))


def transfer_errors(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[TransferError]:
    """``TRANSFER_ERROR::{code}::{detail}``: known and future codes, details with ``::``."""
    budget = _budget(limits, len("TRANSFER_ERROR::") + 64 + 2)
    return st.builds(
        TransferError,
        _codes([c.value for c in TransferErrorCode]),
        st.one_of(st.just(""), free_text(max_bytes=budget, max_separators=_seps(limits, 3))),
    )


def file_cancels() -> SearchStrategy[FileCancel]:
    """``FILE_CANCEL``."""
    return st.just(FileCancel())


def results_requests() -> SearchStrategy[ResultsRequest]:
    """``RESULTS_REQUEST::{job_id}`` (C->W)."""
    return st.builds(ResultsRequest, st.one_of(job_ids(), _job_id_hex()))


def results_via_storage_messages() -> SearchStrategy[ResultsViaStorage]:
    """``RESULTS_VIA_STORAGE`` (C->W)."""
    return st.just(ResultsViaStorage())


def results_stored_messages() -> SearchStrategy[ResultsStored]:
    """``RESULTS_STORED::{job_id}::{download_path}`` (W->C): the storage service's
    ``/download/{job_id}``, or any single-line text with at most two ``::``."""
    return st.one_of(
        st.one_of(job_ids(), _job_id_hex()).map(lambda j: ResultsStored(j, f"/download/{j}")),
        st.builds(
            ResultsStored,
            st.one_of(job_ids(), _job_id_hex()),
            free_text(max_bytes=200, max_separators=2),
        ),
    )


def chunks(*, limits: Limits = DEFAULT_LIMITS, max_size: int = 1024) -> SearchStrategy[Chunk]:
    """Binary frames: drawn bytes up to ``max_size``, and sometimes exactly
    ``limits.max_binary_frame_bytes`` (a repeated seed)."""
    top = limits.max_binary_frame_bytes
    return st.one_of(
        st.binary(max_size=min(max_size, top)).map(Chunk),
        st.builds(
            lambda seed, n: Chunk(_repeat_bytes(seed, n)),
            st.binary(min_size=1, max_size=32),
            st.sampled_from(sorted({0, 1, top // 2, top})),
        ),
    )


#: Each message class and the function giving its strategy (keyword arguments as above).
MESSAGE_STRATEGIES: dict[type[Message], Callable[..., SearchStrategy[Any]]] = {
    JobId: job_id_messages,
    SharedInputPath: shared_input_paths,
    SharedOutputPath: shared_output_paths,
    JobStart: job_starts,
    JobCancel: job_cancels,
    PathValidated: path_validated_messages,
    PathError: path_errors,
    JobLog: job_logs,
    JobMetrics: job_metrics,
    JobComplete: job_completes,
    JobFailed: job_failed_messages,
    ProtocolErrorFrame: protocol_error_frames,
    FileMeta: file_metas,
    FileMetaLegacy: legacy_file_metas,
    FileReady: file_ready_messages,
    FileExists: file_exists_messages,
    EndOfFile: end_of_files,
    FileProgress: file_progresses,
    FileReceived: file_received_messages,
    TransferError: transfer_errors,
    FileCancel: file_cancels,
    ResultsRequest: results_requests,
    ResultsViaStorage: results_via_storage_messages,
    ResultsStored: results_stored_messages,
    Chunk: chunks,
}

_TAKES_LIMITS = {
    SharedInputPath,
    SharedOutputPath,
    PathError,
    JobLog,
    JobComplete,
    JobFailed,
    ProtocolErrorFrame,
    FileMeta,
    FileMetaLegacy,
    TransferError,
    Chunk,
}


def _fits(message: Message, limits: Limits) -> bool:
    """Whether the message's frame is within ``limits``. Paths need no check here: every
    strategy that draws one caps it at ``limits.max_path_bytes`` (see :func:`paths`)."""
    frame = encode(message)
    if isinstance(frame, bytes):
        return len(frame) <= limits.max_binary_frame_bytes
    return _utf8_len(frame) <= limits.max_text_frame_bytes and frame.count(SEP) < limits.max_fields


def _of(classes: tuple[type[Message], ...], limits: Limits) -> SearchStrategy[Message]:
    strategies = [
        MESSAGE_STRATEGIES[cls](limits=limits)
        if cls in _TAKES_LIMITS
        else MESSAGE_STRATEGIES[cls]()
        for cls in classes
    ]
    if limits == DEFAULT_LIMITS:  # every strategy stays within the defaults by construction
        return st.one_of(*strategies)
    return st.one_of(*strategies).filter(lambda m: _fits(m, limits))


_TRANSFER_CLASSES: tuple[type[Message], ...] = (
    FileMeta,
    FileMetaLegacy,
    FileReady,
    FileExists,
    EndOfFile,
    FileProgress,
    FileReceived,
    TransferError,
    FileCancel,
    Chunk,
)
_CLIENT_CLASSES: tuple[type[Message], ...] = (
    JobId,
    SharedInputPath,
    SharedOutputPath,
    JobStart,
    JobCancel,
    ResultsRequest,
    ResultsViaStorage,
    *_TRANSFER_CLASSES,
)
_WORKER_CLASSES: tuple[type[Message], ...] = (
    PathValidated,
    PathError,
    JobLog,
    JobMetrics,
    JobComplete,
    JobFailed,
    ProtocolErrorFrame,
    ResultsStored,
    *_TRANSFER_CLASSES,
)


def messages(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[Message]:
    """Any valid message, text or binary, whose frame fits ``limits``."""
    return _of(tuple(MESSAGE_STRATEGIES), limits)


def client_messages(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[Message]:
    """Messages a client sends: the job frames, RESULTS_REQUEST, and both transfer roles
    (sending its input, receiving the results)."""
    return _of(_CLIENT_CLASSES, limits)


def worker_messages(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[Message]:
    """Messages a worker sends: replies, logs, metrics, outcomes, PROTOCOL_ERROR, and both
    transfer roles (receiving inputs, sending results)."""
    return _of(_WORKER_CLASSES, limits)


def frames(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[str | bytes]:
    """Encoded valid frames (``str`` text frames, ``bytes`` binary frames) within ``limits``."""
    return messages(limits=limits).map(encode)


# ===================================================================== malformed frames


def _expect(frame: str, code: ErrorCode, limits: Limits) -> tuple[str | bytes, ErrorCode]:
    """Pair a text frame with the code decode must raise: the size is checked first, then
    the number of fields, then the rest."""
    if _utf8_len(frame) > limits.max_text_frame_bytes:
        return frame, ErrorCode.FRAME_TOO_LARGE
    if frame.count(SEP) >= limits.max_fields:
        return frame, ErrorCode.TOO_MANY_FIELDS
    return frame, code


_NO_COLON_TEXT = st.text(st.characters(codec="utf-8", exclude_characters=":"), max_size=12)
_BAD_NUMBERS = (
    "",
    "-1",
    "+1",
    "1.5",
    " 1",
    "1 ",
    "1\n",
    "0x10",
    "1e3",
    "１",
    "٣",
    "abc",
    "1" * 19,
    "NaN",
)
_BAD_MB = ("", "-1", "1e5", ".5", "1.", "1.1234567", "inf", "nan", "1" * 16, "1,5", "0x1")
_BAD_COUNT = ("", "-1", "1.0", "1" * 16, "x", " 1", "1e3")
_BAD_SHA = ("", "0" * 63, "0" * 65, "g" * 64, "0" * 32 + " " * 32, "0x" + "0" * 62, "é" * 64)
_BAD_CODES = ("", "lower", "1ABC", "A-B", "A" * 65, "A B", "É", "_A", "Abc")
_BAD_JOB_IDS_NO_COLON = ("", "a" * 65, "has space", "a/b", "é", "a\n", "a\x00", "*", "a,b")


def _bad_job_ids(*, colons: bool) -> SearchStrategy[str]:
    base = st.one_of(
        st.sampled_from(_BAD_JOB_IDS_NO_COLON),
        st.text(min_size=1, max_size=70).filter(
            lambda t: JOB_ID_PATTERN.fullmatch(t) is None and ":" not in t
        ),
    )
    if not colons:
        return base
    return st.one_of(base, st.sampled_from(["a:b", "a:", ":", "a::b", "::"]))


def _bad_metrics_json() -> SearchStrategy[str]:
    good = dict.fromkeys(JobMetrics.FIELDS, 1.5)

    def with_value(name: str, raw: str) -> str:
        parts = [f'"{key}":{raw if key == name else "1.5"}' for key in JobMetrics.FIELDS]
        return "{" + ",".join(parts) + "}"

    def without(names: list[str]) -> str:
        return json.dumps({k: v for k, v in good.items() if k not in names})

    return st.one_of(
        st.sampled_from(
            [
                "",
                "{",
                "{not json",
                "{'validation_ms': 1}",
                "[1,2]",
                "1",
                "null",
                '"text"',
                "true",
                json.dumps(good) + " x",
                "[" * 30000,
                "{" * 1000,
                '{"validation_ms":' * 3000,
            ]
        ),
        st.builds(
            with_value,
            st.sampled_from(JobMetrics.FIELDS),
            st.sampled_from(
                [
                    "-1",
                    '"1"',
                    "true",
                    "false",
                    "null",
                    "NaN",
                    "Infinity",
                    "-Infinity",
                    "1e14",
                    "1e400",
                    "[1]",
                    "{}",
                    "1" * 5000,
                    "-0.001",
                ]
            ),
        ),
        st.lists(st.sampled_from(JobMetrics.FIELDS), min_size=1, unique=True).map(without),
    )


def malformed_frames_with_codes(
    *, limits: Limits = DEFAULT_LIMITS
) -> SearchStrategy[tuple[str | bytes, ErrorCode]]:
    """Frames a conforming peer must refuse, each with the :class:`ErrorCode` that
    :func:`protocol.messages.decode` raises for it (as a ``RemoteProtocolError``).

    Covers: unknown types (lower case, trailing spaces or newlines, BOM, arbitrary text);
    fields on field-less types; missing fields; bad job ids; non-numeric, signed,
    fractional, non-ASCII-digit and 19-digit counts; bad sha256; broken FILE_META (both
    forms); invalid JSON, wrong values and 30000-deep nesting in JOB_METRICS; line
    breaks where a single line is required; empty required fields; bad codes; frames
    just over ``limits.max_text_frame_bytes`` (ASCII and multi-byte), paths over
    ``limits.max_path_bytes``, binary frames over ``limits.max_binary_frame_bytes`` and
    text frames just over ``limits.max_fields`` fields. A frame of another group that
    breaks a limit (small limits) is paired with the code of that limit, as decode
    checks the frame's size first, then its number of fields.
    """
    malformed = ErrorCode.MALFORMED_FRAME

    def pair(code: ErrorCode) -> Callable[[str], tuple[str | bytes, ErrorCode]]:
        return lambda frame: _expect(frame, code, limits)

    types = sorted(FRAME_TYPES)
    odd_types = (
        [t.lower() for t in types]
        + [t + " " for t in types]
        + [" " + t for t in types]
        + [t + "\n" for t in types]
        + ["\ufeff" + t for t in types]
        + [t + "\x00" for t in types]
        + ["", ":", "JOB-START", "FILE_META:", "SHARED_INPUT_PATH :"]
    )
    unknown = st.builds(
        lambda type_, rest: type_ if rest is None else f"{type_}{SEP}{rest}",
        st.one_of(st.sampled_from(odd_types), st.text(max_size=24)),
        st.one_of(st.none(), st.text(max_size=40)),
    ).filter(lambda f: f.partition(SEP)[0] not in FRAME_TYPES)

    fieldless_with_fields = st.builds(
        lambda t, rest: f"{t}{SEP}{rest}", st.sampled_from(_FIELDLESS), st.text(max_size=20)
    )
    legacy_start = st.one_of(
        st.just("SHARED_STORAGE_JOB"),
        st.text(max_size=12)
        .filter(lambda r: r != "start")
        .map(lambda r: f"SHARED_STORAGE_JOB{SEP}{r}"),
    )
    missing = st.sampled_from(
        [t for t in types if t not in _FIELDLESS and t != "SHARED_STORAGE_JOB"]
    )

    bad_ids = st.one_of(
        _bad_job_ids(colons=True).map(lambda j: f"JOB_ID{SEP}{j}"),
        _bad_job_ids(colons=True).map(lambda j: f"RESULTS_REQUEST{SEP}{j}"),
        _bad_job_ids(colons=False).map(lambda j: f"RESULTS_STORED{SEP}{j}{SEP}/download/x"),
        st.builds(
            lambda j, r: f"JOB_FAILED{SEP}{j}{SEP}{r}",
            _bad_job_ids(colons=False),
            free_text(max_bytes=40),
        ),
        st.builds(
            lambda j, p: f"JOB_COMPLETE{SEP}{j}{SEP}{p}{SEP}3{SEP}1.25",
            _bad_job_ids(colons=False),
            paths(max_bytes=60),
        ),
    )

    name = st.sampled_from(["train.zip", "a b.zip", "x::y.zip", "中文"])
    legacy_name = st.sampled_from(["train.zip", "a b", "中文", "x:y"])
    sha = sha256_hex()
    count = st.integers(0, _MAX_COUNT).map(str)
    bad_numbers = st.one_of(
        st.sampled_from(_BAD_NUMBERS).map(lambda n: f"FILE_READY{SEP}{n}"),
        st.builds(
            lambda a, b, flip: f"FILE_PROGRESS{SEP}{b if flip else a}{SEP}{a if flip else b}",
            st.sampled_from(_BAD_NUMBERS),
            count,
            st.booleans(),
        ),
        count.map(lambda n: f"FILE_PROGRESS{SEP}{n}"),
        st.builds(lambda a, b, c: f"FILE_PROGRESS{SEP}{a}{SEP}{b}{SEP}{c}", count, count, count),
        st.builds(
            lambda j, p, c: f"JOB_COMPLETE{SEP}{j}{SEP}{p}{SEP}{c}{SEP}1.00",
            job_ids(),
            paths(max_bytes=60),
            st.sampled_from(_BAD_COUNT),
        ),
        st.builds(
            lambda j, p, mb: f"JOB_COMPLETE{SEP}{j}{SEP}{p}{SEP}2{SEP}{mb}",
            job_ids(),
            paths(max_bytes=60),
            st.sampled_from(_BAD_MB),
        ),
        st.builds(
            lambda j, fields: SEP.join(["JOB_COMPLETE", j, *fields]),
            job_ids(),
            st.lists(st.sampled_from(["out", "1", "2.00", "a b"]), max_size=2),
        ),
        st.builds(
            lambda n, s, h, c: SEP.join(["FILE_META", n, s, h, c]),
            name,
            st.sampled_from(_BAD_NUMBERS),
            sha,
            count.filter(lambda c: c != "0"),
        ),
        st.builds(
            lambda n, s, h, c: SEP.join(["FILE_META", n, s, h, c]),
            name,
            count,
            sha,
            st.sampled_from(("0", *_BAD_NUMBERS)),
        ),
    )
    bad_sha = st.one_of(
        st.builds(
            lambda t, h: f"{t}{SEP}{h}",
            st.sampled_from(["FILE_EXISTS", "FILE_RECEIVED"]),
            st.sampled_from(_BAD_SHA),
        ),
        st.builds(
            lambda n, s, h, c: SEP.join(["FILE_META", n, s, h, c]),
            name,
            count,
            st.sampled_from(_BAD_SHA),
            count,
        ),
    )
    broken_meta = st.one_of(
        st.builds(lambda s, h: SEP.join(["FILE_META", "", s, h, "64"]), count, sha),
        st.builds(
            lambda n, s, h: SEP.join(["FILE_META", n, s, h]),
            legacy_name.filter(lambda n: ":" not in n),
            count,
            sha,
        ),
        st.builds(lambda n: f"FILE_META{SEP}{n}", st.sampled_from(["train.zip", "a b", ""])),
        st.builds(
            lambda n, s, g: f"FILE_META{SEP}{n}:{s}:{g}",
            st.sampled_from(["train.zip", "a b", "中文"]),
            st.sampled_from([b for b in _BAD_NUMBERS if b and ":" not in b and "\n" not in b]),
            _NO_COLON_TEXT,
        ),
        st.builds(lambda s: f"FILE_META{SEP}a{SEP}b:{s}:", count),  # a legacy name with '::'
        st.builds(lambda s: f"FILE_META{SEP}na\nme:{s}:", count),
        st.builds(lambda s: f"FILE_META{SEP}name:{s}:g\rui", count),
        st.just(f"FILE_META{SEP}:5:"),  # an empty legacy name
    )
    single_line = st.builds(
        lambda a, brk, b: f"JOB_LOG{SEP}{a}{brk}{b}",
        free_text(max_bytes=40) | st.just(""),
        st.sampled_from(["\n", "\r", "\r\n"]),
        free_text(max_bytes=40) | st.just(""),
    )
    empty_required = st.sampled_from(
        [
            f"SHARED_INPUT_PATH{SEP}",
            f"SHARED_OUTPUT_PATH{SEP}",
            f"PATH_ERROR{SEP}",
            f"JOB_FAILED{SEP}job-1{SEP}",
            f"JOB_FAILED{SEP}job-1",
            f"PATH_VALIDATED{SEP}",
            f"PATH_VALIDATED{SEP}both",
            f"PATH_VALIDATED{SEP}Input",
            f"PATH_VALIDATED{SEP}input ",
            f"PATH_VALIDATED{SEP}input{SEP}x",
        ]
    )
    bad_codes = st.builds(
        lambda t, c, d: f"{t}{SEP}{c}{SEP}{d}",
        st.sampled_from(["PROTOCOL_ERROR", "TRANSFER_ERROR"]),
        st.sampled_from(_BAD_CODES),
        free_text(max_bytes=30) | st.just(""),
    )
    metrics = _bad_metrics_json().map(lambda body: f"JOB_METRICS{SEP}{body}")

    top = limits.max_text_frame_bytes
    oversize_text = st.builds(
        lambda prefix, seed, extra: prefix + _fill(seed, top - _utf8_len(prefix) + extra),
        st.sampled_from([*(f"{t}{SEP}" for t in types), "", "NOPE::"]),
        st.sampled_from(["x", "é", "中", "😀", "::", ":", "a:", "["]),
        st.integers(1, 8),
    )
    oversize_path = st.builds(
        lambda t, seed, extra: (
            f"{t}{SEP}" + _fill(seed + "/", limits.max_path_bytes + extra, pad="p")
        ),
        st.sampled_from(["SHARED_INPUT_PATH", "SHARED_OUTPUT_PATH"]),
        st.sampled_from(["a", "é", "中文", "a::b", "😀"]),
        st.integers(1, 8),
    )
    too_many_fields = st.builds(
        lambda t, field, extra: f"{t}{SEP}" + SEP.join([field] * (limits.max_fields + extra - 1)),
        st.sampled_from([*types, "NOPE"]),
        st.sampled_from(["", "a", "x y", "1", "é", "job-1"]),
        st.integers(1, 8),
    )
    oversize_binary = st.builds(
        lambda seed, extra: _repeat_bytes(seed, limits.max_binary_frame_bytes + extra),
        st.binary(min_size=1, max_size=16),
        st.integers(1, 64),
    )

    return st.one_of(
        unknown.map(pair(ErrorCode.UNKNOWN_MESSAGE)),
        fieldless_with_fields.map(pair(malformed)),
        legacy_start.map(pair(malformed)),
        missing.map(pair(malformed)),
        bad_ids.map(pair(ErrorCode.INVALID_JOB_ID)),
        bad_numbers.map(pair(malformed)),
        bad_sha.map(pair(malformed)),
        broken_meta.map(pair(malformed)),
        single_line.map(pair(malformed)),
        empty_required.map(pair(malformed)),
        bad_codes.map(pair(malformed)),
        metrics.map(pair(malformed)),
        oversize_text.map(pair(ErrorCode.FRAME_TOO_LARGE)),
        oversize_path.map(pair(ErrorCode.PATH_TOO_LONG)),
        oversize_binary.map(lambda b: (b, ErrorCode.FRAME_TOO_LARGE)),
        too_many_fields.map(pair(ErrorCode.TOO_MANY_FIELDS)),
    )


def malformed_frames(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[str | bytes]:
    """Text and binary frames that :func:`protocol.messages.decode` must refuse with a
    ``RemoteProtocolError`` (see :func:`malformed_frames_with_codes` for what is covered)."""
    return malformed_frames_with_codes(limits=limits).map(lambda pair: pair[0])


# ===================================================================== exchanges


class _Script:
    """Collects (direction, frame) pairs while an exchange is being drawn."""

    def __init__(self) -> None:
        self.frames: Exchange = []
        #: Whether the job session is in HAVE_FILE (or READY): JOB_START would run a job.
        self.start_allowed = False

    def c(self, message: Message) -> None:
        self.frames.append((C2W, encode(message)))

    def w(self, message: Message) -> None:
        self.frames.append((W2C, encode(message)))

    def send(self, direction: Direction, message: Message) -> None:
        self.frames.append((direction, encode(message)))


def _other(direction: Direction) -> Direction:
    return W2C if direction == C2W else C2W


def _stream(
    draw: st.DrawFn,
    script: _Script,
    direction: Direction,
    data: bytes,
    start: int,
    stop: int,
    chunk_size: int,
    size: int,
) -> None:
    """Chunks of ``data[start:stop]`` from ``direction``, with a few FILE_PROGRESS replies."""
    offsets = list(range(start, stop, chunk_size))
    progress_after = draw(st.sets(st.sampled_from(offsets), max_size=3)) if offsets else set()
    for offset in offsets:
        piece = data[offset : min(offset + chunk_size, stop)]
        script.send(direction, Chunk(piece))
        if offset in progress_after:
            script.send(_other(direction), FileProgress(offset + len(piece), size))


def _file(
    draw: st.DrawFn, max_file_bytes: int, max_chunks: int, limits: Limits, min_size: int = 0
) -> tuple[bytes, int]:
    """Drawn file bytes and a chunk size giving at most ``max_chunks`` chunks."""
    data = draw(st.binary(min_size=min_size, max_size=max(min_size, max_file_bytes)))
    lower = max(1, -(-len(data) // max_chunks))
    upper = max(lower, min(limits.max_binary_frame_bytes, 1024))
    chunk_size = draw(st.integers(lower, upper))
    return data, chunk_size


def _transfer(
    draw: st.DrawFn,
    script: _Script,
    direction: Direction,
    name: str,
    data: bytes,
    chunk_size: int,
    *,
    offset: int = 0,
) -> None:
    """A complete transfer from ``direction``: FILE_META, FILE_READY, chunks, END_OF_FILE,
    FILE_RECEIVED."""
    sha = _sha(data)
    script.send(direction, FileMeta(name, len(data), sha, chunk_size))
    script.send(_other(direction), FileReady(offset))
    _stream(draw, script, direction, data, offset, len(data), chunk_size, len(data))
    script.send(direction, EndOfFile())
    script.send(_other(direction), FileReceived(sha))


def _job_run(
    draw: st.DrawFn, script: _Script, job_id: str, output: str, *, cancel: bool = False
) -> None:
    """JOB_START then the job's output: JOB_LOG lines, then JOB_METRICS and JOB_COMPLETE,
    or JOB_CANCEL and JOB_FAILED cancelled."""
    script.c(JobStart(legacy=draw(st.booleans())))
    script.start_allowed = False  # the job runs, then the session is IDLE again
    for line in draw(st.lists(free_text(max_bytes=120), max_size=3)):
        script.w(JobLog(line))
    if cancel:
        script.c(JobCancel())
        script.w(JobFailed(job_id, "cancelled"))
        return
    if draw(st.integers(0, 9)) == 0:
        script.w(JobFailed(job_id, draw(free_text(max_bytes=120))))
        return
    script.w(draw(job_metrics()))
    count = draw(st.integers(0, 10**6))
    total = draw(st.integers(0, 10**12))
    script.w(JobComplete(job_id, output, count, JobComplete.mb_from_bytes(total)))


def _name_job(draw: st.DrawFn, script: _Script) -> str:
    """Maybe JOB_ID; the id the job will carry (the worker's ``job-`` + 12 hex otherwise)."""
    if draw(st.booleans()):
        job_id = draw(job_ids())
        script.c(JobId(job_id))
        return job_id
    return draw(_job_id_hex())


def _short_paths() -> SearchStrategy[str]:
    return paths(max_bytes=120)


def _validate_paths(draw: st.DrawFn, script: _Script) -> str:
    """SHARED_INPUT_PATH and SHARED_OUTPUT_PATH (either order), both validated; the output."""
    input_path, output_path = draw(_short_paths()), draw(_short_paths())
    steps = [
        (SharedInputPath(input_path), PathValidated("input")),
        (SharedOutputPath(output_path), PathValidated("output")),
    ]
    if draw(st.integers(0, 3)) == 0:
        steps.reverse()
    for request, reply in steps:
        script.c(request)
        script.w(reply)
    return output_path


def _shared_job(draw: st.DrawFn, script: _Script, *, cancel: bool = False) -> None:
    job_id = _name_job(draw, script)
    output = _validate_paths(draw, script)
    _job_run(draw, script, job_id, output, cancel=cancel)


def _upload(
    draw: st.DrawFn,
    script: _Script,
    kind: str,
    max_file_bytes: int,
    max_chunks: int,
    limits: Limits,
) -> None:
    name = draw(file_names(max_bytes=80))
    if kind == "dedupe":
        data = draw(st.binary(max_size=64))
        script.c(FileMeta(name, len(data), _sha(data), draw(st.integers(1, 65536))))
        script.w(FileExists(_sha(data)))
        script.start_allowed = True  # the held file is the next job's input
        return
    if kind == "resume":
        data, chunk_size = _file(draw, max_file_bytes, max_chunks, limits, min_size=1)
        if draw(st.booleans()):
            # This connection continues what an earlier one left on the receiver.
            offset = draw(st.integers(1, len(data)))
            _transfer(draw, script, C2W, name, data, chunk_size, offset=offset)
            script.start_allowed = True
            return
        # Cut on this connection (FILE_CANCEL keeps the partial), then resumed.
        sha = _sha(data)
        sent = draw(st.integers(0, len(data) - 1)) // chunk_size * chunk_size
        script.c(FileMeta(name, len(data), sha, chunk_size))
        script.w(FileReady(0))
        _stream(draw, script, C2W, data, 0, sent, chunk_size, len(data))
        script.c(FileCancel())
        script.w(
            TransferError(
                TransferErrorCode.CANCELLED,
                f"cancelled by the sender; {sent} bytes kept for a resume",
            )
        )
        _transfer(draw, script, C2W, name, data, chunk_size, offset=sent)
        script.start_allowed = True
        return
    data, chunk_size = _file(draw, max_file_bytes, max_chunks, limits)
    _transfer(draw, script, C2W, name, data, chunk_size)
    script.start_allowed = True


def _results(
    draw: st.DrawFn, script: _Script, max_file_bytes: int, max_chunks: int, limits: Limits
) -> None:
    job_id = _name_job(draw, script)
    _upload(
        draw,
        script,
        draw(st.sampled_from(["transfer", "dedupe"])),
        max_file_bytes,
        max_chunks,
        limits,
    )
    output = f"{_JOBS_DIR}/{job_id}/output"
    script.c(JobStart(legacy=draw(st.booleans())))
    script.start_allowed = False
    for line in draw(st.lists(free_text(max_bytes=80), max_size=2)):
        script.w(JobLog(line))
    script.w(draw(job_metrics()))
    script.w(JobComplete(job_id, output, draw(st.integers(1, 100)), 0.0))
    script.c(ResultsRequest(job_id))
    # Stand-in bytes for the results ZIP (an empty archive's end record, then noise).
    zip_bytes = b"PK\x05\x06" + bytes(18) + draw(st.binary(max_size=max_file_bytes))
    lower = max(1, -(-len(zip_bytes) // max_chunks))
    chunk_size = draw(st.integers(lower, max(lower, min(limits.max_binary_frame_bytes, 1024))))
    _transfer(draw, script, W2C, f"results-{job_id}.zip", zip_bytes, chunk_size)


def _cancel(
    draw: st.DrawFn, script: _Script, max_file_bytes: int, max_chunks: int, limits: Limits
) -> None:
    if draw(st.booleans()):
        _shared_job(draw, script, cancel=True)
        return
    data, chunk_size = _file(draw, max_file_bytes, max_chunks, limits, min_size=1)
    sha = _sha(data)
    sent = draw(st.integers(0, len(data))) // chunk_size * chunk_size
    script.c(FileMeta(draw(file_names(max_bytes=80)), len(data), sha, chunk_size))
    script.w(FileReady(0))
    _stream(draw, script, C2W, data, 0, sent, chunk_size, len(data))
    script.c(FileCancel())
    script.w(
        TransferError(
            TransferErrorCode.CANCELLED, f"cancelled by the sender; {sent} bytes kept for a resume"
        )
    )


_OUTSIDE_PATHS = ("../secret", "/etc/passwd", "a/../../b", "C:\\x", "a\x00b", "..", "a/..")
_BAD_NAMES = ("../x", "a/b", "a\\b", "..", ".", "C:x", "a\x00b", "a\nb", "．．", "x／y")


def _error(
    draw: st.DrawFn,
    script: _Script,
    max_file_bytes: int,
    max_chunks: int,
    limits: Limits,
    max_file_size: int,
) -> None:
    which = draw(
        st.sampled_from(
            [
                "input",
                "output",
                "early_start",
                "cancel_idle",
                "second_start",
                "stray_chunk",
                "invalid_name",
                "too_large",
                "hash_mismatch",
                "size_mismatch",
            ]
        )
    )
    if which == "input":
        path = draw(st.one_of(st.sampled_from(_OUTSIDE_PATHS), _short_paths()))
        prefix = draw(st.sampled_from(PATH_ERROR_PREFIXES[:2] + PATH_ERROR_PREFIXES[3:5]))
        if path in _OUTSIDE_PATHS:
            prefix = PATH_ERROR_PREFIXES[0]
        script.c(SharedInputPath(path))
        script.w(PathError(f"{prefix}: {path}"))
        script.start_allowed = False  # a refused input also forgets a received file
        if draw(st.booleans()):  # the client tries again with a good path
            _shared_job(draw, script)
    elif which == "output":
        path = draw(_short_paths())
        prefix = draw(st.sampled_from(["Not a directory", "Permission denied"]))
        script.c(SharedOutputPath(path))
        script.w(PathError(f"{prefix}: {path}"))
    elif which in ("early_start", "cancel_idle"):
        if script.start_allowed and which == "early_start":
            # A received file would make JOB_START valid: a refused input forgets it.
            path = draw(st.sampled_from(_OUTSIDE_PATHS))
            script.c(SharedInputPath(path))
            script.w(PathError(f"{PATH_ERROR_PREFIXES[0]}: {path}"))
            script.start_allowed = False
        if draw(st.booleans()):  # only one of the two paths
            script.c(SharedInputPath(draw(_short_paths())))
            script.w(PathValidated("input"))
        script.c(JobStart() if which == "early_start" else JobCancel())
        script.w(ProtocolErrorFrame(ErrorCode.UNEXPECTED_MESSAGE, "not allowed now"))
    elif which == "second_start":
        job_id = _name_job(draw, script)
        output = _validate_paths(draw, script)
        script.c(JobStart())
        script.start_allowed = False
        script.c(JobStart())
        script.w(ProtocolErrorFrame(ErrorCode.UNEXPECTED_MESSAGE, "a job is running"))
        script.w(JobComplete(job_id, output, 1, 0.01))
    elif which == "stray_chunk":
        script.c(Chunk(draw(st.binary(min_size=1, max_size=64))))
        script.w(TransferError(TransferErrorCode.UNEXPECTED_DATA, "no transfer is open"))
    elif which == "invalid_name":
        data = draw(st.binary(max_size=64))
        name = draw(st.sampled_from(_BAD_NAMES))
        script.c(FileMeta(name, len(data), _sha(data), 64))
        script.w(TransferError(TransferErrorCode.INVALID_NAME, "not a base name"))
    elif which == "too_large":
        size = draw(st.integers(max_file_size + 1, max(max_file_size + 1, _MAX_COUNT)))
        script.c(FileMeta(draw(file_names(max_bytes=40)), size, draw(sha256_hex()), 65536))
        script.w(TransferError(TransferErrorCode.FILE_TOO_LARGE, "above the limit"))
    elif which == "hash_mismatch":
        data, chunk_size = _file(draw, max_file_bytes, max_chunks, limits)
        announced = _sha(data + b"!")
        script.c(FileMeta(draw(file_names(max_bytes=40)), len(data), announced, chunk_size))
        script.w(FileReady(0))
        _stream(draw, script, C2W, data, 0, len(data), chunk_size, len(data))
        script.c(EndOfFile())
        script.w(TransferError(TransferErrorCode.HASH_MISMATCH, f"expected {announced}"))
    else:  # size_mismatch: END_OF_FILE before every byte was sent
        data, chunk_size = _file(draw, max_file_bytes, max_chunks, limits, min_size=1)
        sent = draw(st.integers(0, len(data) - 1)) // chunk_size * chunk_size
        script.c(FileMeta(draw(file_names(max_bytes=40)), len(data), _sha(data), chunk_size))
        script.w(FileReady(0))
        _stream(draw, script, C2W, data, 0, sent, chunk_size, len(data))
        script.c(EndOfFile())
        script.w(TransferError(TransferErrorCode.SIZE_MISMATCH, "bytes missing"))


def _legacy(
    draw: st.DrawFn, script: _Script, max_file_bytes: int, max_chunks: int, limits: Limits
) -> None:
    data, chunk_size = _file(draw, max_file_bytes, max_chunks, limits, min_size=1)
    name = draw(file_names(max_bytes=60).filter(lambda n: SEP not in n))
    script.c(FileMetaLegacy(name, len(data), draw(st.sampled_from(["", "gui", "1"]))))
    for offset in range(0, len(data), chunk_size):
        script.c(Chunk(data[offset : offset + chunk_size]))
    script.w(FileReceived(_sha(data)))
    script.start_allowed = True
    if draw(st.booleans()):  # earlier senders may or may not end with END_OF_FILE
        script.c(EndOfFile())


def exchanges(
    *,
    kinds: tuple[str, ...] = EXCHANGE_KINDS,
    limits: Limits = DEFAULT_LIMITS,
    max_file_bytes: int = 2048,
    max_chunks: int = 24,
    max_file_size: int = 10 * 1024**3,
    max_parts: int = 3,
) -> SearchStrategy[Exchange]:
    """Whole valid exchanges: lists of ``(direction, frame)`` with direction ``"C->W"`` or
    ``"W->C"``, in the order the frames cross the channel, each reply right after what
    it answers. One to ``max_parts`` of these, one after another on one channel:

    * ``shared_job``: JOB_ID?, SHARED_INPUT_PATH, PATH_VALIDATED::input,
      SHARED_OUTPUT_PATH, PATH_VALIDATED::output (sometimes output first), JOB_START,
      JOB_LOG*, JOB_METRICS, JOB_COMPLETE (or JOB_FAILED).
    * ``transfer``: FILE_META, FILE_READY::0, chunks of drawn bytes (at most
      ``max_file_bytes``, at most ``max_chunks`` chunks, every chunk ``chunk_size`` but
      the last), FILE_PROGRESS*, END_OF_FILE, FILE_RECEIVED with the bytes' sha256.
    * ``resume``: FILE_READY with an offset and only the remaining chunks (continuing
      an earlier connection), or a FILE_CANCEL, its TRANSFER_ERROR::CANCELLED and a
      second FILE_META answered with the offset reached.
    * ``dedupe``: FILE_META answered FILE_EXISTS, no chunks.
    * ``results``: an uploaded (or held) file, JOB_START, JOB_COMPLETE naming the job
      folder, RESULTS_REQUEST and the worker's transfer of ``results-{job_id}.zip``.
    * ``cancel``: JOB_CANCEL of a running job (JOB_FAILED::{job_id}::cancelled), or the
      sender's FILE_CANCEL mid-transfer (TRANSFER_ERROR::CANCELLED).
    * ``error``: PATH_ERROR (input or output), PROTOCOL_ERROR::UNEXPECTED_MESSAGE
      (JOB_START or JOB_CANCEL too early, a second JOB_START), TRANSFER_ERROR for a stray
      chunk, an invalid name, a file above ``max_file_size``, a hash or size mismatch.
    * ``legacy``: the earlier ``FILE_META::{name}:{size}:{gui}``, chunks at once,
      FILE_RECEIVED, and maybe a trailing END_OF_FILE.

    Free-text details of TRANSFER_ERROR and PROTOCOL_ERROR are illustrative; their codes
    are what a peer must produce. Every exchange is consistent with
    :class:`protocol.job.JobSession` and the transfer machines of
    :mod:`protocol.transfer` (with ``max_size=max_file_size``) played in lockstep.
    """
    unknown = set(kinds) - set(EXCHANGE_KINDS)
    if unknown or not kinds:
        raise ValueError(f"kinds must be taken from {EXCHANGE_KINDS}, got {kinds}")

    @st.composite
    def build(draw: st.DrawFn) -> Exchange:
        script = _Script()
        for kind in draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=max_parts)):
            if kind == "shared_job":
                _shared_job(draw, script)
            elif kind in ("transfer", "resume", "dedupe"):
                _upload(draw, script, kind, max_file_bytes, max_chunks, limits)
            elif kind == "results":
                _results(draw, script, max_file_bytes, max_chunks, limits)
            elif kind == "cancel":
                _cancel(draw, script, max_file_bytes, max_chunks, limits)
            elif kind == "error":
                _error(draw, script, max_file_bytes, max_chunks, limits, max_file_size)
            else:
                _legacy(draw, script, max_file_bytes, max_chunks, limits)
        return script.frames

    return build()


# ===================================================================== signaling


def peer_ids() -> SearchStrategy[str]:
    """Valid signaling peer ids: ``[A-Za-z0-9._-]{1,64}``."""
    return st.from_regex(PEER_ID_PATTERN.strip("^$"), fullmatch=True)


_JSON_TEXT = st.text(st.characters(codec="utf-8"), max_size=20)


def json_values(*, max_leaves: int = 8) -> SearchStrategy[Any]:
    """JSON values that survive a round trip: null, booleans, integers within ±2^53,
    finite floats, text (no lone surrogates), and lists and objects of them."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**53), 2**53),
        st.floats(allow_nan=False, allow_infinity=False),
        _JSON_TEXT,
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(_JSON_TEXT, inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def _metadata() -> SearchStrategy[dict[str, Any]]:
    return st.dictionaries(_JSON_TEXT, json_values(max_leaves=4), max_size=4).filter(
        lambda m: (
            len(json.dumps(m, separators=(",", ":"), ensure_ascii=False).encode())
            <= MAX_METADATA_BYTES
        )
    )


def _sdp() -> SearchStrategy[str]:
    return st.one_of(
        st.just("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"),
        st.text(st.characters(codec="utf-8"), max_size=200),
    )


def client_signaling_frames() -> SearchStrategy[ClientFrame]:
    """Frames a peer sends to the signaling server (protocol.signaling models):
    register (with token and metadata or not), list_peers, offer, answer, candidate
    (any JSON candidate, null included)."""
    return st.one_of(
        st.builds(
            Register,
            peer_id=peer_ids(),
            role=st.sampled_from(["worker", "client"]),
            token=st.none() | _JSON_TEXT,
            metadata=_metadata(),
        ),
        st.just(ListPeers()),
        st.builds(Offer, to=peer_ids(), sdp=_sdp()),
        st.builds(Answer, to=peer_ids(), sdp=_sdp()),
        st.builds(Candidate, to=peer_ids(), candidate=json_values()),
    )


def server_signaling_frames() -> SearchStrategy[ServerFrame]:
    """Frames the signaling server sends (protocol.signaling models): registered, peers,
    relayed offer/answer/candidate (with ``from``), error (known and future codes)."""
    return st.one_of(
        st.builds(Registered, peer_id=peer_ids()),
        st.builds(
            Peers,
            peers=st.lists(
                st.builds(
                    PeerInfo,
                    peer_id=peer_ids(),
                    role=st.sampled_from(["worker", "client"]),
                    metadata=_metadata(),
                ),
                max_size=4,
            ).map(tuple),
        ),
        st.builds(RelayedOffer, from_=peer_ids(), to=peer_ids(), sdp=_sdp()),
        st.builds(RelayedAnswer, from_=peer_ids(), to=peer_ids(), sdp=_sdp()),
        st.builds(RelayedCandidate, from_=peer_ids(), to=peer_ids(), candidate=json_values()),
        st.builds(
            ErrorFrame,
            code=_codes([c.value for c in SignalingErrorCode]),
            message=_JSON_TEXT,
            ref_type=st.none() | st.text(max_size=64),
        ),
    )


def signaling_frames() -> SearchStrategy[ClientFrame | ServerFrame]:
    """Any signaling frame model, either direction (serialize with ``dump_frame``)."""
    return st.one_of(client_signaling_frames(), server_signaling_frames())


_BAD_PEER_IDS = ("", "a b", "a" * 65, "a\n", "\na", "é", "a/b", "a:b", "*")
_REQUIRED = {
    "register": ("peer_id", "role"),
    "offer": ("to", "sdp"),
    "answer": ("to", "sdp"),
    "candidate": ("to", "candidate"),
}
_STRING_FIELDS = {
    "register": ("peer_id", "role", "token"),
    "offer": ("to", "sdp"),
    "answer": ("to", "sdp"),
    "candidate": ("to",),
}


def malformed_signaling_frames_with_codes(
    *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> SearchStrategy[tuple[str, str]]:
    """Text frames :func:`protocol.signaling.parse_client_frame` must refuse, each with
    the :class:`protocol.signaling.ErrorCode` value of the ``SignalingError`` it raises
    (``max_bytes`` is the limit passed to the parser).

    Covers: text that is not JSON (or is I-JSON-invalid: NaN, Infinity, 1e400, lone
    surrogates, 100000-deep nesting); JSON that is not an object; a missing or non-string
    ``type``; unknown types (server-only types included); missing required fields;
    wrongly typed fields; invalid peer ids and roles; metadata that is not an object or
    is over its limit; frames over ``max_bytes``. A frame of any other group that is over
    ``max_bytes`` (a small limit) is paired with ``FRAME_TOO_LARGE``: the parser checks the
    size first.
    """
    invalid_json = st.sampled_from(
        [
            "",
            "{",
            "not json",
            "{'type': 'list_peers'}",
            '{"type":"list_peers"',
            '{"type":"list_peers"} x',
            "NaN",
            '{"type":"list_peers","x":NaN}',
            '{"type":"list_peers","x":-Infinity}',
            '{"type":"list_peers","x":1e400}',
            '{"type":"list_peers","x":"\\ud800"}',
            '{"type":"list_peers","\\udfff":1}',
            "[" * 100000,
            '{"type":"candidate","to":"a","candidate":' + "[" * 100000,
        ]
    ).map(lambda text: (text, SignalingErrorCode.INVALID_JSON))
    not_object = st.one_of(
        st.sampled_from(["[]", "1", "null", '"register"', "true", "[{}]"]),
        json_values()
        .filter(lambda v: not isinstance(v, dict))
        .map(lambda v: json.dumps(v, ensure_ascii=False)),
    ).map(lambda text: (text, SignalingErrorCode.INVALID_FRAME))
    bad_type = st.sampled_from(
        [
            "{}",
            '{"peer_id":"a"}',
            '{"type":1}',
            '{"type":null}',
            '{"type":["offer"]}',
            '{"type":{"t":"offer"}}',
            '{"type":true}',
        ]
    ).map(lambda text: (text, SignalingErrorCode.INVALID_FRAME))
    unknown_type = st.one_of(
        st.sampled_from(["registered", "peers", "error", "Register", "OFFER", "", " offer"]),
        st.text(max_size=20).filter(lambda t: t not in _REQUIRED and t != "list_peers"),
    ).map(lambda t: (json.dumps({"type": t}), SignalingErrorCode.UNKNOWN_TYPE))

    valid = (
        client_signaling_frames()
        .filter(lambda f: f.type in _REQUIRED)
        .map(lambda frame: json.loads(dump_frame(frame)))
    )

    def drop(obj: dict[str, Any], index: int) -> str:
        fields = _REQUIRED[obj["type"]]
        obj = dict(obj)
        del obj[fields[index % len(fields)]]
        return json.dumps(obj)

    def retype(obj: dict[str, Any], index: int, value: Any) -> str:
        fields = _STRING_FIELDS[obj["type"]]
        return json.dumps({**obj, fields[index % len(fields)]: value})

    def bad_id(obj: dict[str, Any], peer_id: str) -> str:
        key = "peer_id" if obj["type"] == "register" else "to"
        return json.dumps({**obj, key: peer_id})

    wrong_values: SearchStrategy[int | float | list[int] | dict[str, Any]] = st.one_of(
        st.integers(),
        st.booleans(),
        st.lists(st.integers(), max_size=2),
        st.just({}),
        st.floats(allow_nan=False, allow_infinity=False),
    )
    fields = st.one_of(
        st.builds(drop, valid, st.integers(0, 1)),
        st.builds(retype, valid, st.integers(0, 2), wrong_values),
        st.builds(bad_id, valid, st.sampled_from(_BAD_PEER_IDS)),
        st.builds(
            lambda pid, role: json.dumps({"type": "register", "peer_id": pid, "role": role}),
            peer_ids(),
            st.sampled_from(["admin", "Worker", "", "workers", None, 1]),
        ),
        st.builds(
            lambda pid, meta: json.dumps(
                {"type": "register", "peer_id": pid, "role": "client", "metadata": meta}
            ),
            peer_ids(),
            st.one_of(
                st.sampled_from([[], "x", 1, True, [{"a": 1}]]),
                st.integers(MAX_METADATA_BYTES, 2 * MAX_METADATA_BYTES).map(
                    lambda n: {"blob": "x" * n}
                ),
            ),
        ),
    ).map(lambda text: (text, SignalingErrorCode.INVALID_FRAME))
    too_large = st.builds(
        lambda extra, seed: (
            json.dumps({"type": "offer", "to": "w", "sdp": _fill(seed, max_bytes + extra)}),
            SignalingErrorCode.FRAME_TOO_LARGE,
        ),
        st.integers(1, 64),
        st.sampled_from(["x", "é", "中"]),
    )

    def expect(pair: tuple[str, SignalingErrorCode]) -> tuple[str, str]:
        text, code = pair
        if _utf8_len(text) > max_bytes:  # the parser checks the size first
            return text, str(SignalingErrorCode.FRAME_TOO_LARGE)
        return text, str(code)

    return st.one_of(invalid_json, not_object, bad_type, unknown_type, fields, too_large).map(
        expect
    )


def malformed_signaling_frames(*, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> SearchStrategy[str]:
    """Text frames the signaling server must refuse with a ``SignalingError`` (see
    :func:`malformed_signaling_frames_with_codes`)."""
    return malformed_signaling_frames_with_codes(max_bytes=max_bytes).map(lambda p: p[0])
