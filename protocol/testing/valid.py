"""Hypothesis strategies: one per message type, and any message or frame of a role.

Every strategy that produces frames takes ``limits`` (default
:data:`~protocol.limits.DEFAULT_LIMITS`) and stays within it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from protocol import auth_messages as a
from protocol import messages as m
from protocol import relay_messages as r
from protocol import transfer_messages as t
from protocol.codec import MESSAGE_TYPES, encode
from protocol.errors import ErrorCode, PathReason, TransferErrorCode
from protocol.limits import DEFAULT_LIMITS, MAX_PROOF_RANGE_BYTES, MAX_PROOF_RANGES, Limits
from protocol.messages import (
    SEP,
)
from protocol.routes import ROUTES, Part, Role
from protocol.testing.relay import relay_endeds, relay_parts, relay_stops
from protocol.testing.text import (
    MAX_COUNT,
    counts,
    file_names,
    fit,
    free_text,
    job_ids,
    paths,
    repeat_bytes,
    separators_left,
    sha256_hex,
    thin,
    utf8_len,
    worker_job_ids,
)

__all__ = [
    "MESSAGE_STRATEGIES",
    "auth_challenges",
    "auth_hellos",
    "auth_oks",
    "auth_responses",
    "chunks",
    "client_messages",
    "codes",
    "end_of_files",
    "file_cancels",
    "file_exists_messages",
    "file_metas",
    "file_progresses",
    "file_proof_requests",
    "file_proofs",
    "file_ready_messages",
    "file_received_messages",
    "frame_budget",
    "frames",
    "job_cancels",
    "job_completes",
    "job_failed_messages",
    "job_id_messages",
    "job_logs",
    "job_metrics",
    "job_starts",
    "legacy_file_metas",
    "messages",
    "path_errors",
    "path_validated_messages",
    "proof_nonces",
    "protocol_error_frames",
    "results_requests",
    "results_stored_messages",
    "results_via_storage_messages",
    "shared_input_paths",
    "shared_output_paths",
    "transfer_errors",
    "worker_messages",
]


def job_id_messages() -> SearchStrategy[m.JobId]:
    """``JOB_ID::{job_id}`` (C->W)."""
    return st.builds(m.JobId, job_ids())


def shared_input_paths(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[m.SharedInputPath]:
    """``SHARED_INPUT_PATH::{path}`` (C->W), paths up to ``limits.max_path_bytes``."""
    return st.builds(m.SharedInputPath, paths(limits=limits))


def shared_output_paths(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[m.SharedOutputPath]:
    """``SHARED_OUTPUT_PATH::{path}`` (C->W), paths up to ``limits.max_path_bytes``."""
    return st.builds(m.SharedOutputPath, paths(limits=limits))


def job_starts() -> SearchStrategy[m.JobStart]:
    """``JOB_START`` or the earlier ``SHARED_STORAGE_JOB::start`` (C->W)."""
    return st.builds(m.JobStart, legacy=st.booleans())


def job_cancels() -> SearchStrategy[m.JobCancel]:
    """``JOB_CANCEL`` (C->W)."""
    return st.just(m.JobCancel())


def path_validated_messages() -> SearchStrategy[m.PathValidated]:
    """``PATH_VALIDATED::input`` or ``PATH_VALIDATED::output`` (W->C)."""
    return st.sampled_from([m.PathValidated("input"), m.PathValidated("output")])


def frame_budget(limits: Limits, fixed: int) -> int:
    """Bytes left for a free field once ``fixed`` bytes of the frame are spoken for."""
    return max(1, limits.max_text_frame_bytes - fixed)


def path_errors(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[m.PathError]:
    """``PATH_ERROR::{reason}`` (W->C): a known prefix quoting a path, or free text;
    sometimes filling the frame to ``limits.max_text_frame_bytes``."""
    budget = frame_budget(limits, len("PATH_ERROR::"))
    quoted = st.builds(
        lambda prefix, path: fit(f"{prefix}: {path}", budget),
        st.sampled_from([reason.value for reason in PathReason]),
        paths(limits=limits),
    )
    free = free_text(max_bytes=budget, max_separators=separators_left(limits, 2))
    return st.builds(m.PathError, st.one_of(quoted, free))


def job_logs(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[m.JobLog]:
    """``JOB_LOG::{line}`` (W->C), one line, sometimes filling the frame; empty lines too."""
    budget = frame_budget(limits, len("JOB_LOG::"))
    line = free_text(max_bytes=budget, max_separators=separators_left(limits, 2))
    return st.builds(m.JobLog, st.one_of(st.just(""), line))


def _metric_values() -> SearchStrategy[float | int]:
    return st.one_of(
        st.floats(0, 1e14, exclude_max=True, allow_nan=False, allow_infinity=False),
        st.integers(0, 10**13),
        st.sampled_from([0.0, 0.001, 0.0005, 99999999999999.98]),
    )


def job_metrics() -> SearchStrategy[m.JobMetrics]:
    """``JOB_METRICS::{json}`` (W->C): four numbers in [0, 1e14) (ms and s), with or
    without the optional ``road`` and ``transfer_mb_s``."""
    return st.builds(
        m.JobMetrics,
        *[_metric_values() for _ in m.JobMetrics.FIELDS],
        st.none() | st.sampled_from(sorted(m.JobMetrics.ROADS)),
        st.none() | _metric_values(),
    )


def job_completes(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[m.JobComplete]:
    """``JOB_COMPLETE::{job_id}::{output_path}::{file_count}::{total_mb}`` (W->C): output
    paths holding ``::`` up to the path limit, counts up to 10^15 - 1, total_mb in [0, 1e14)."""
    fixed = len("JOB_COMPLETE::") + 64 + 2 + 2 + 15 + 2 + 17
    cap = min(limits.max_path_bytes, frame_budget(limits, fixed))
    return st.builds(
        m.JobComplete,
        st.one_of(job_ids(), worker_job_ids()),
        st.one_of(
            paths(limits=limits, max_bytes=cap),
            worker_job_ids().map(lambda j: f"jobs/{j}/output"),
        ),
        st.one_of(st.integers(0, 10**15 - 1), st.sampled_from([0, 1, 10**15 - 1])),
        st.one_of(
            st.floats(0, 1e14, exclude_max=True, allow_nan=False, allow_infinity=False),
            st.sampled_from([0.0, 0.005, 0.01, 12.345, 99999999999999.98]),
        ),
    )


def job_failed_messages(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[m.JobFailed]:
    """``JOB_FAILED::{job_id}::{reason}`` (W->C), reasons holding ``::``."""
    budget = frame_budget(limits, len("JOB_FAILED::") + 64 + 2)
    reasons = st.one_of(
        st.sampled_from(["cancelled", "Job command exited with code 2"]),
        free_text(max_bytes=budget, max_separators=separators_left(limits, 3)),
    )
    return st.builds(m.JobFailed, job_ids(), reasons)


def codes(known: list[str]) -> SearchStrategy[str]:
    """``known`` codes, and any other that follows the code grammar (a future one)."""
    return st.one_of(st.sampled_from(known), st.from_regex(r"[A-Z][A-Z0-9_]{0,63}", fullmatch=True))


def protocol_error_frames(
    *, limits: Limits = DEFAULT_LIMITS
) -> SearchStrategy[m.ProtocolErrorFrame]:
    """``PROTOCOL_ERROR::{code}::{detail}``: known and future upper-case codes, details
    holding ``::`` (or empty)."""
    budget = frame_budget(limits, len("PROTOCOL_ERROR::") + 64 + 2)
    return st.builds(
        m.ProtocolErrorFrame,
        codes([c.value for c in ErrorCode]),
        st.one_of(
            st.just(""), free_text(max_bytes=budget, max_separators=separators_left(limits, 3))
        ),
    )


def file_metas(
    *,
    limits: Limits = DEFAULT_LIMITS,
    names: SearchStrategy[str] | None = None,
    max_size: int = MAX_COUNT,
    max_chunk_size: int = MAX_COUNT,
) -> SearchStrategy[t.FileMeta]:
    """``FILE_META::{name}::{size}::{sha256}::{chunk_size}``: names from
    :func:`file_names` (or ``names``), sizes up to ``max_size``, chunk sizes 1 to
    ``max_chunk_size``, sha256 in either case (it is kept lowercase)."""
    budget = frame_budget(limits, len("FILE_META::") + 3 * 2 + 18 + 64 + 18)
    return st.builds(
        t.FileMeta,
        (file_names(max_bytes=budget) if names is None else names).map(
            lambda name: thin(name, separators_left(limits, 5))
        ),
        counts(max_size),
        sha256_hex(allow_upper=True),
        st.one_of(st.integers(1, min(max_chunk_size, 1 << 18)), st.integers(1, max_chunk_size)),
    )


def legacy_file_metas(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[t.FileMetaLegacy]:
    """The earlier ``FILE_META::{name}:{size}:{gui}``: names without ``::``, guis without
    ``:`` (possibly empty)."""
    gui = st.text(
        st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp"), exclude_characters=":"),
        max_size=16,
    )
    budget = frame_budget(limits, len("FILE_META::") + 2 + 18 + 16 * 4)
    names = file_names(max_bytes=budget).filter(lambda n: SEP not in n)
    return st.builds(t.FileMetaLegacy, names, counts(), gui)


def proof_nonces(*, allow_upper: bool = True) -> SearchStrategy[str]:
    """32 hexadecimal digits (a proof nonce; mixed case too with ``allow_upper``)."""
    return sha256_hex(allow_upper=allow_upper).map(lambda digest: digest[:32])


def file_proof_requests() -> SearchStrategy[t.FileProofRequest]:
    """``FILE_PROOF_REQUEST::{nonce}::{ranges}``: 1 to 16 ranges ``(offset, length)``,
    lengths 1 to 65536 bytes, offsets up to the largest count that still fits."""
    top = MAX_COUNT - MAX_PROOF_RANGE_BYTES
    ranges = st.lists(
        st.tuples(counts(top), st.integers(1, MAX_PROOF_RANGE_BYTES)),
        min_size=1,
        max_size=MAX_PROOF_RANGES,
    ).map(tuple)
    return st.builds(t.FileProofRequest, proof_nonces(), ranges)


def file_proofs() -> SearchStrategy[t.FileProof]:
    """``FILE_PROOF::{sha256}``."""
    return st.builds(t.FileProof, sha256_hex(allow_upper=True))


def file_ready_messages() -> SearchStrategy[t.FileReady]:
    """``FILE_READY::{offset}``, offsets 0 to 10^18 - 1."""
    return st.builds(t.FileReady, counts())


def file_exists_messages() -> SearchStrategy[t.FileExists]:
    """``FILE_EXISTS::{sha256}``."""
    return st.builds(t.FileExists, sha256_hex(allow_upper=True))


def end_of_files() -> SearchStrategy[t.EndOfFile]:
    """``END_OF_FILE``."""
    return st.just(t.EndOfFile())


def file_progresses() -> SearchStrategy[t.FileProgress]:
    """``FILE_PROGRESS::{bytes_received}::{size}``."""
    return st.builds(t.FileProgress, counts(), counts())


def file_received_messages() -> SearchStrategy[t.FileReceived]:
    """``FILE_RECEIVED::{sha256}``."""
    return st.builds(t.FileReceived, sha256_hex(allow_upper=True))


def transfer_errors(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[t.TransferError]:
    """``TRANSFER_ERROR::{code}::{detail}``: known and future codes, details with ``::``."""
    budget = frame_budget(limits, len("TRANSFER_ERROR::") + 64 + 2)
    return st.builds(
        t.TransferError,
        codes([c.value for c in TransferErrorCode]),
        st.one_of(
            st.just(""), free_text(max_bytes=budget, max_separators=separators_left(limits, 3))
        ),
    )


def file_cancels() -> SearchStrategy[t.FileCancel]:
    """``FILE_CANCEL``."""
    return st.just(t.FileCancel())


def results_requests() -> SearchStrategy[m.ResultsRequest]:
    """``RESULTS_REQUEST::{job_id}`` (C->W)."""
    return st.builds(m.ResultsRequest, st.one_of(job_ids(), worker_job_ids()))


def results_via_storage_messages() -> SearchStrategy[m.ResultsViaStorage]:
    """``RESULTS_VIA_STORAGE`` (C->W)."""
    return st.just(m.ResultsViaStorage())


def results_stored_messages() -> SearchStrategy[m.ResultsStored]:
    """``RESULTS_STORED::{job_id}::{download_path}::{sha256}::{size}::{token}`` (W->C):
    the storage service's ``/download/{job_id}`` with a sha256, a size and a token; or the
    earlier two-field form with any single-line text with at most two ``::``."""
    tokens = st.text(st.sampled_from("abcXYZ019._~+/=-"), min_size=1, max_size=40)
    return st.one_of(
        st.builds(
            lambda j, sha, size, token: m.ResultsStored(j, f"/download/{j}", sha, size, token),
            st.one_of(job_ids(), worker_job_ids()),
            sha256_hex(),
            counts(),
            tokens,
        ),
        st.one_of(job_ids(), worker_job_ids()).map(lambda j: m.ResultsStored(j, f"/download/{j}")),
        st.builds(
            m.ResultsStored,
            st.one_of(job_ids(), worker_job_ids()),
            free_text(max_bytes=200, max_separators=2),
        ),
    )


def chunks(*, limits: Limits = DEFAULT_LIMITS, max_size: int = 1024) -> SearchStrategy[t.Chunk]:
    """Binary frames: drawn bytes up to ``max_size``, and sometimes exactly
    ``limits.max_binary_frame_bytes`` (a repeated seed)."""
    top = limits.max_binary_frame_bytes
    return st.one_of(
        st.binary(max_size=min(max_size, top)).map(t.Chunk),
        st.builds(
            lambda seed, n: t.Chunk(repeat_bytes(seed, n)),
            st.binary(min_size=1, max_size=32),
            st.sampled_from(sorted({0, 1, top // 2, top})),
        ),
    )


#: Each message class and the function giving its strategy (keyword arguments as above).
def auth_hellos() -> SearchStrategy[a.AuthHello]:
    """``AUTH_HELLO::{public_key}::{nonce}`` (C->W); any 32-byte key and nonce."""
    return st.builds(a.AuthHello, st.binary(min_size=32, max_size=32), _nonces())


def auth_challenges() -> SearchStrategy[a.AuthChallenge]:
    """``AUTH_CHALLENGE::{public_key}::{nonce}::{signature}`` (W->C); the signature is
    random bytes (valid signatures come from :mod:`protocol.testing.pair`)."""
    return st.builds(
        a.AuthChallenge,
        st.binary(min_size=32, max_size=32),
        _nonces(),
        st.binary(min_size=64, max_size=64),
    )


def auth_responses() -> SearchStrategy[a.AuthResponse]:
    """``AUTH_RESPONSE::{signature}`` (C->W); random signature bytes."""
    return st.builds(a.AuthResponse, st.binary(min_size=64, max_size=64))


def auth_oks() -> SearchStrategy[a.AuthOk]:
    """``AUTH_OK::{fingerprint}`` (W->C)."""
    return st.builds(a.AuthOk, sha256_hex())


def _nonces() -> SearchStrategy[bytes]:
    return st.one_of(st.binary(min_size=32, max_size=32), st.just(bytes(32)))


MESSAGE_STRATEGIES: dict[type[m.Message], Callable[..., SearchStrategy[Any]]] = {
    m.JobId: job_id_messages,
    m.SharedInputPath: shared_input_paths,
    m.SharedOutputPath: shared_output_paths,
    m.JobStart: job_starts,
    m.JobCancel: job_cancels,
    m.PathValidated: path_validated_messages,
    m.PathError: path_errors,
    m.JobLog: job_logs,
    m.JobMetrics: job_metrics,
    m.JobComplete: job_completes,
    m.JobFailed: job_failed_messages,
    m.ProtocolErrorFrame: protocol_error_frames,
    t.FileMeta: file_metas,
    t.FileMetaLegacy: legacy_file_metas,
    t.FileProofRequest: file_proof_requests,
    t.FileProof: file_proofs,
    t.FileReady: file_ready_messages,
    t.FileExists: file_exists_messages,
    t.EndOfFile: end_of_files,
    t.FileProgress: file_progresses,
    t.FileReceived: file_received_messages,
    t.TransferError: transfer_errors,
    t.FileCancel: file_cancels,
    r.RelayPart: relay_parts,
    r.RelayStop: relay_stops,
    r.RelayEnded: relay_endeds,
    m.ResultsRequest: results_requests,
    m.ResultsViaStorage: results_via_storage_messages,
    m.ResultsStored: results_stored_messages,
    t.Chunk: chunks,
    a.AuthHello: auth_hellos,
    a.AuthChallenge: auth_challenges,
    a.AuthResponse: auth_responses,
    a.AuthOk: auth_oks,
}

_TAKES_LIMITS = {
    m.SharedInputPath,
    m.SharedOutputPath,
    m.PathError,
    m.JobLog,
    m.JobComplete,
    m.JobFailed,
    m.ProtocolErrorFrame,
    t.FileMeta,
    t.FileMetaLegacy,
    t.TransferError,
    t.Chunk,
}


def _fits(message: m.Message, limits: Limits) -> bool:
    """Whether the message's frame is within ``limits``. Paths need no check here: every
    strategy that draws one caps it at ``limits.max_path_bytes`` (see :func:`paths`)."""
    frame = encode(message)
    if isinstance(frame, bytes):
        return len(frame) <= limits.max_binary_frame_bytes
    return utf8_len(frame) <= limits.max_text_frame_bytes and frame.count(SEP) < limits.max_fields


def _of(classes: tuple[type[m.Message], ...], limits: Limits) -> SearchStrategy[m.Message]:
    strategies = [
        MESSAGE_STRATEGIES[cls](limits=limits)
        if cls in _TAKES_LIMITS
        else MESSAGE_STRATEGIES[cls]()
        for cls in classes
    ]
    if limits == DEFAULT_LIMITS:  # every strategy stays within the defaults by construction
        return st.one_of(*strategies)
    return st.one_of(*strategies).filter(lambda m: _fits(m, limits))


def _sent_by(role: Role) -> tuple[type[m.Message], ...]:
    """What ``role`` sends: the message types its peer's routes take (a client sends no
    PROTOCOL_ERROR: it reports a refusal to its caller)."""
    peer = Role.CLIENT if role is Role.WORKER else Role.WORKER
    return tuple(
        cls
        for cls in MESSAGE_TYPES
        if ROUTES[peer][cls] is not Part.REFUSED
        and not (role is Role.CLIENT and cls is m.ProtocolErrorFrame)
    )


def messages(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[m.Message]:
    """Any valid message, text or binary, whose frame fits ``limits``."""
    return _of(tuple(MESSAGE_STRATEGIES), limits)


def client_messages(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[m.Message]:
    """Messages a client sends: the job frames, RESULTS_REQUEST, and both transfer roles
    (sending its input, receiving the results)."""
    return _of(_sent_by(Role.CLIENT), limits)


def worker_messages(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[m.Message]:
    """Messages a worker sends: replies, logs, metrics, outcomes, PROTOCOL_ERROR, and both
    transfer roles (receiving inputs, sending results)."""
    return _of(_sent_by(Role.WORKER), limits)


def frames(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[str | bytes]:
    """Encoded valid frames (``str`` text frames, ``bytes`` binary frames) within ``limits``."""
    return messages(limits=limits).map(encode)
