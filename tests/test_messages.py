"""The message classes: validated when built (a LocalProtocolError with the code a peer
would get for the same mistake), frozen, and their helpers."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from protocol import (
    Chunk,
    ErrorCode,
    FileExists,
    FileMeta,
    FileMetaLegacy,
    FileProgress,
    FileReady,
    FileReceived,
    JobComplete,
    JobFailed,
    JobId,
    JobLog,
    JobMetrics,
    LocalProtocolError,
    PathError,
    PathReason,
    PathValidated,
    ProtocolErrorFrame,
    ResultsRequest,
    ResultsStored,
    SharedInputPath,
    SharedOutputPath,
    TransferError,
    is_valid_job_id,
)
from protocol.codec import MESSAGE_TYPES
from protocol.messages import Message

SHA = "ab" * 32


@pytest.mark.parametrize(
    ("build", "detail"),
    [
        (lambda: SharedInputPath(123), "path must be text"),
        (lambda: SharedOutputPath(""), "path must not be empty"),
        (lambda: PathError(None), "reason must be text"),
        (lambda: PathError(""), "reason must not be empty"),
        (lambda: JobLog("a\nb"), "line must be a single line"),
        (lambda: JobLog("a\rb"), "line must be a single line"),
        (lambda: JobFailed("j", ""), "reason must not be empty"),
        (lambda: PathValidated("sideways"), "PATH_VALIDATED takes input or output"),
        (lambda: JobComplete("j", "out", 1.5, 0.0), "file_count must be an integer"),
        (lambda: JobComplete("j", "out", True, 0.0), "file_count must be an integer"),
        (lambda: JobComplete("j", "out", 10**15, 0.0), "file_count out of range"),
        (lambda: JobComplete("j", "out", -1, 0.0), "file_count out of range"),
        (lambda: JobComplete("j", "out", 1, -0.01), "total_mb must be a number >= 0"),
        (lambda: JobComplete("j", "out", 1, True), "total_mb must be a number >= 0"),
        (lambda: JobComplete("j", "out", 1, "1.0"), "total_mb must be a number >= 0"),
        (lambda: JobComplete("j", "out", 1, 1e14), "total_mb must be a number >= 0"),
        (lambda: JobComplete("j", 7, 1, 1.0), "output_path must be text"),
        (lambda: FileExists("not-hex"), "sha256 must be 64 hexadecimal digits"),
        (lambda: FileReceived(b"ab" * 32), "sha256 must be 64 hexadecimal digits"),
        (lambda: FileReady(-1), "offset must be an integer >= 0"),
        (lambda: FileReady(True), "offset must be an integer >= 0"),
        (lambda: FileReady(10**18), "offset must be an integer >= 0"),
        (lambda: FileProgress(1, 2.0), "size must be an integer >= 0"),
        (lambda: FileProgress(-1, 2), "bytes_received must be an integer >= 0"),
        (lambda: FileMeta("a.bin", 1, SHA, 0), "chunk_size must be an integer >= 1"),
        (lambda: FileMeta("", 1, SHA), "name must not be empty"),
        (lambda: FileMetaLegacy("a::b", 1), "a legacy FILE_META name has no '::'"),
        (lambda: FileMetaLegacy("a\nb", 1), "name must be a single line"),
        (lambda: FileMetaLegacy("a", 1, "x:y"), "gui has no ':'"),
        (lambda: FileMetaLegacy("a", 1, "x\ry"), "gui must be a single line"),
        (lambda: TransferError("lower"), "code must match [A-Z][A-Z0-9_]{0,63}"),
        (lambda: TransferError(7), "code must match [A-Z][A-Z0-9_]{0,63}"),
        (lambda: TransferError("HASH_MISMATCH", 7), "detail must be text"),
        (lambda: ProtocolErrorFrame("A" * 65), "code must match [A-Z][A-Z0-9_]{0,63}"),
        (lambda: ProtocolErrorFrame("WORKER_BUSY", None), "detail must be text"),
        (lambda: ResultsStored("j", ""), "download_path must not be empty"),
        (lambda: ResultsStored("j", "/a\nb"), "download_path must be a single line"),
        (lambda: Chunk("text, not bytes"), "chunk data must be bytes"),
        (lambda: Chunk(bytearray(b"x")), "chunk data must be bytes"),
    ],
)
def test_invalid_fields_are_local_malformed_frame_errors(build: Any, detail: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        build()
    assert type(info.value) is LocalProtocolError
    assert info.value.code is ErrorCode.MALFORMED_FRAME
    assert info.value.detail == detail


@pytest.mark.parametrize(
    "build",
    [
        lambda: JobId("not valid!"),
        lambda: JobId(""),
        lambda: JobId("a" * 65),
        lambda: JobId(7),
        lambda: ResultsRequest("../etc"),
        lambda: ResultsStored("bad id", "/download/x"),
        lambda: JobComplete("a/b", "out", 1, 1.0),
        lambda: JobFailed("é", "reason"),
    ],
)
def test_a_bad_job_id_is_an_invalid_job_id_error(build: Any) -> None:
    with pytest.raises(LocalProtocolError) as info:
        build()
    assert info.value.code is ErrorCode.INVALID_JOB_ID
    assert info.value.detail == "job_id must match [A-Za-z0-9._-]{1,64}, not only dots"


VALID_JOB_IDS = ["a", "A" * 64, "job-0123456789ab", ".a", "a..", "-"]
INVALID_JOB_IDS = ["", "a" * 65, "a b", "a:b", "é", ".", "..", "." * 64]


@pytest.mark.parametrize(
    ("job_id", "valid"),
    [(j, True) for j in VALID_JOB_IDS] + [(j, False) for j in INVALID_JOB_IDS],
)
def test_is_valid_job_id(job_id: str, valid: bool) -> None:
    assert is_valid_job_id(job_id) is valid


@pytest.mark.parametrize(
    "value", [None, "fast", [1], 10**400, float("inf"), float("nan"), True, -1]
)
def test_job_metrics_refuses_anything_but_a_number_in_range(value: Any) -> None:
    with pytest.raises(LocalProtocolError) as info:
        JobMetrics(0, 0, 0, value)
    assert info.value.code is ErrorCode.MALFORMED_FRAME
    assert info.value.detail == "total_s must be a number in [0, 1e14)"


def test_job_metrics_rounds_to_milliseconds_and_keeps_ints_as_floats() -> None:
    metrics = JobMetrics(1, 2.00049, 3.0006, 0)
    assert metrics.as_dict() == {
        "validation_ms": 1.0,
        "file_access_ms": 2.0,
        "run_s": 3.001,
        "total_s": 0.0,
    }
    assert all(type(value) is float for value in metrics.as_dict().values())
    assert tuple(metrics.as_dict()) == JobMetrics.FIELDS


def test_job_complete_keeps_two_decimals_of_megabytes() -> None:
    assert JobComplete("j", "o", 1, 12.345678).total_mb == 12.35
    assert type(JobComplete("j", "o", 1, 3).total_mb) is float
    assert JobComplete.mb_from_bytes(0) == 0.0
    assert JobComplete.mb_from_bytes(1_234_567) == 1.23
    assert JobComplete.mb_from_bytes(1_235_000) == 1.24
    assert JobComplete.mb_from_bytes(12_345_678) == 12.35


def test_sha256_is_stored_lower_case() -> None:
    assert FileExists(SHA.upper()).sha256 == SHA
    assert FileReceived(SHA.upper()) == FileReceived(SHA)
    assert FileMeta("a", 0, SHA.upper()).sha256 == SHA


def test_chunk_repr_hides_the_bytes() -> None:
    chunk = Chunk(b"\x00secret\xff")
    assert repr(chunk) == "Chunk(<8 bytes>)"
    assert "secret" not in repr(chunk)
    assert repr(Chunk(b"")) == "Chunk(<0 bytes>)"


def test_error_codes_are_kept_as_plain_strings() -> None:
    frame = ProtocolErrorFrame(ErrorCode.WORKER_BUSY, "later")
    assert type(frame.code) is str and frame.code == "WORKER_BUSY"
    assert type(TransferError("FUTURE_CODE").code) is str
    assert TransferError("CANCELLED").detail == ""


def test_path_error_names_its_reason_and_the_quoted_path() -> None:
    error = PathError.of(PathReason.OUTSIDE_ROOT, "../etc/passwd")
    assert error.reason == "Path outside shared storage: ../etc/passwd"
    assert (error.kind, error.path) == (PathReason.OUTSIDE_ROOT, "../etc/passwd")
    tricky = PathError.of(PathReason.NOT_FOUND, "a: b::c")
    assert (tricky.kind, tricky.path) == (PathReason.NOT_FOUND, "a: b::c")
    bare = PathError(PathReason.PERMISSION_DENIED.value)
    assert (bare.kind, bare.path) == (PathReason.PERMISSION_DENIED, "")
    free = PathError("the disk is on fire")
    assert (free.kind, free.path) == (None, None)
    assert PathError("File not found:x").kind is None  # the reason ends with ": "
    for reason in PathReason:
        assert PathError.of(reason, "p").kind is reason
        assert reason.quote("p") == f"{reason.value}: p"


def test_messages_are_frozen_and_slotted() -> None:
    for cls in MESSAGE_TYPES:
        assert dataclasses.is_dataclass(cls)
        assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
        assert "__slots__" in vars(cls), cls
    message = SharedInputPath("a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.path = "b"  # type: ignore[misc]
    # (Python 3.11's frozen slotted dataclasses raise TypeError here, later ones
    # AttributeError: either way nothing is added.)
    with pytest.raises((AttributeError, TypeError)):
        message.extra = 1  # type: ignore[attr-defined]
    assert not hasattr(message, "__dict__")


def test_the_34_types_have_one_class_each_and_a_type_but_the_chunk() -> None:
    assert len(MESSAGE_TYPES) == len(set(MESSAGE_TYPES)) == 34
    assert all(issubclass(cls, Message) for cls in MESSAGE_TYPES)
    assert [cls for cls in MESSAGE_TYPES if not cls.TYPE] == [Chunk]


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"sha256": "0" * 64}, "go together"),
        ({"sha256": "0" * 64, "size": 3}, "go together"),
        ({"size": 3, "token": "t"}, "go together"),
        ({"sha256": "0" * 64, "size": 3, "token": "a::b"}, "token must match"),
        ({"sha256": "0" * 64, "size": 3, "token": ""}, "token must match"),
        ({"sha256": "0" * 64, "size": -1, "token": "t"}, "size"),
    ],
)
def test_results_stored_verification_fields_are_all_or_none(
    fields: dict[str, object], detail: str
) -> None:
    with pytest.raises(LocalProtocolError) as info:
        ResultsStored("run-1", "/download/run-1", **fields)  # type: ignore[arg-type]
    assert info.value.code == ErrorCode.MALFORMED_FRAME and detail in info.value.detail


def test_results_stored_keeps_the_sha256_in_lower_case() -> None:
    stored = ResultsStored("run-1", "/download/run-1", "AB" * 32, 3, "t")
    assert stored.sha256 == "ab" * 32


@pytest.mark.parametrize(
    ("ranges", "detail"),
    [
        ([(0, 1)], "1 to"),
        ((), "1 to"),
        (((0, 1, 2),), "a range is (offset, length)"),
        (([0, 1],), "a range is (offset, length)"),
        (((0, 0),), "length"),
    ],
)
def test_a_proof_request_names_byte_ranges_as_pairs(ranges: object, detail: str) -> None:
    from protocol.transfer_messages import FileProofRequest

    with pytest.raises(LocalProtocolError) as info:
        FileProofRequest("0" * 32, ranges)  # type: ignore[arg-type]
    assert info.value.code == ErrorCode.MALFORMED_FRAME and detail in info.value.detail
