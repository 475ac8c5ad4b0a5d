"""Edges of the protocol core that the flow and property tests do not reach on purpose.

Each test pins one refusal or one rarely used form: which exception, which code, and
the exact text or value where the contract names one. Together with the other tests
they keep every branch of ``protocol/`` exercised (``scripts/test.sh`` enforces it).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

import protocol.signaling as sig
from protocol import (
    Chunk,
    EndOfFile,
    ErrorCode,
    FileCancel,
    FileExists,
    FileMeta,
    FileMetaLegacy,
    FileProgress,
    FileReady,
    FileReceived,
    JobComplete,
    JobMetrics,
    LocalProtocolError,
    Message,
    PathError,
    PathValidated,
    RemoteProtocolError,
    ResultsRequest,
    SharedInputPath,
    TransferError,
    decode,
    encode,
)

SHA = "ab" * 32

# ---------------------------------------------------------------- building messages


@pytest.mark.parametrize(
    ("build", "detail"),
    [
        (lambda: SharedInputPath(123), "path must be text"),
        (lambda: PathError(None), "reason must be text"),
        (lambda: JobComplete("j", "out", 1.5, 0.0), "file_count must be an integer"),
        (lambda: JobComplete("j", "out", True, 0.0), "file_count must be an integer"),
        (lambda: JobComplete("j", "out", 10**15, 0.0), "file_count out of range"),
        (lambda: JobComplete("j", "out", 1, -0.01), "total_mb must be a number >= 0"),
        (lambda: JobComplete("j", "out", 1, True), "total_mb must be a number >= 0"),
        (lambda: JobComplete("j", "out", 1, "1.0"), "total_mb must be a number >= 0"),
        (lambda: JobComplete("j", "out", 1, 1e14), "total_mb must be a number >= 0"),
        (lambda: FileExists("not-hex"), "sha256 must be 64 hexadecimal digits"),
        (lambda: FileReceived(b"ab" * 32), "sha256 must be 64 hexadecimal digits"),
        (lambda: FileReady(-1), "offset must be an integer >= 0"),
        (lambda: FileReady(True), "offset must be an integer >= 0"),
        (lambda: FileReady(10**18), "offset must be an integer >= 0"),
        (lambda: FileProgress(1, 2.0), "size must be an integer >= 0"),
        (lambda: FileMeta("a.bin", 1, SHA, 0), "chunk_size must be an integer >= 1"),
        (lambda: FileMetaLegacy("a::b", 1), "a legacy FILE_META name has no '::'"),
        (lambda: FileMetaLegacy("a\nb", 1), "name must be a single line"),
        (lambda: FileMetaLegacy("a", 1, "x:y"), "gui has no ':'"),
        (lambda: FileMetaLegacy("a", 1, "x\ry"), "gui must be a single line"),
        (lambda: TransferError("lower"), "code must match [A-Z][A-Z0-9_]{0,63}"),
        (lambda: TransferError(7), "code must match [A-Z][A-Z0-9_]{0,63}"),
        (lambda: TransferError("HASH_MISMATCH", 7), "detail must be text"),
        (lambda: Chunk("text, not bytes"), "chunk data must be bytes"),
        (lambda: Chunk(bytearray(b"x")), "chunk data must be bytes"),
    ],
)
def test_invalid_fields_are_local_malformed_frame_errors(build: Any, detail: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        build()
    assert info.value.code is ErrorCode.MALFORMED_FRAME
    assert info.value.detail == detail


@pytest.mark.parametrize("value", [None, "fast", [1], 10**400, float("inf"), True, -1])
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


def test_sha256_is_stored_lower_case() -> None:
    assert FileExists(SHA.upper()).sha256 == SHA
    assert FileReceived(SHA.upper()) == FileReceived(SHA)
    assert FileMeta("a", 0, SHA.upper()).sha256 == SHA


def test_chunk_repr_hides_the_bytes() -> None:
    chunk = Chunk(b"\x00secret\xff")
    assert repr(chunk) == "Chunk(<8 bytes>)"
    assert "secret" not in repr(chunk)
    assert repr(Chunk(b"")) == "Chunk(<0 bytes>)"


def test_job_complete_mb_from_bytes_is_decimal_megabytes() -> None:
    assert JobComplete.mb_from_bytes(0) == 0.0
    assert JobComplete.mb_from_bytes(1_234_567) == 1.23
    assert JobComplete.mb_from_bytes(1_235_000) == 1.24


# ---------------------------------------------------------------- encode

TRANSFER_FRAMES: list[tuple[str, Message]] = [
    (f"FILE_META::a::b.bin::10::{SHA}::4096", FileMeta("a::b.bin", 10, SHA, 4096)),
    ("FILE_READY::0", FileReady(0)),
    ("FILE_READY::123456789012345678", FileReady(123456789012345678)),
    (f"FILE_EXISTS::{SHA}", FileExists(SHA)),
    ("END_OF_FILE", EndOfFile()),
    ("FILE_PROGRESS::5::10", FileProgress(5, 10)),
    (f"FILE_RECEIVED::{SHA}", FileReceived(SHA)),
    (
        "TRANSFER_ERROR::DISK_FULL::no space: 0 bytes left",
        TransferError("DISK_FULL", "no space: 0 bytes left"),
    ),
    ("TRANSFER_ERROR::CANCELLED::", TransferError("CANCELLED")),
    ("FILE_CANCEL", FileCancel()),
    ("RESULTS_REQUEST::job-1", ResultsRequest("job-1")),
]


@pytest.mark.parametrize(("frame", "message"), TRANSFER_FRAMES)
def test_transfer_frames_encode_and_decode_exactly(frame: str, message: Message) -> None:
    assert encode(message) == frame
    assert decode(frame) == message


def test_results_request_needs_a_valid_job_id() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode("RESULTS_REQUEST::../etc")
    assert info.value.code is ErrorCode.INVALID_JOB_ID
    with pytest.raises(LocalProtocolError) as local:
        ResultsRequest("")
    assert local.value.code is ErrorCode.INVALID_JOB_ID


def test_legacy_file_meta_encodes_with_single_colons_and_round_trips() -> None:
    meta = FileMetaLegacy("photo one.jpg", 1024, "gui-7")
    frame = encode(meta)
    assert frame == "FILE_META::photo one.jpg:1024:gui-7"
    assert decode(frame) == meta
    assert encode(FileMetaLegacy("a", 0)) == "FILE_META::a:0:"
    assert decode("FILE_META::a:0:") == FileMetaLegacy("a", 0, "")


def test_encoding_something_that_is_not_a_frame_is_a_local_error() -> None:
    class Unframed(Message):
        __slots__ = ()

    for message in (Message(), Unframed()):
        with pytest.raises(LocalProtocolError) as info:
            encode(message)
        assert info.value.code is ErrorCode.UNKNOWN_MESSAGE
        assert info.value.detail == f"cannot encode {type(message).__name__}"


# ---------------------------------------------------------------- decode


def test_path_validated_decodes_only_input_or_output() -> None:
    assert decode("PATH_VALIDATED::input") == PathValidated("input")
    assert decode("PATH_VALIDATED::output") == PathValidated("output")
    for frame in ("PATH_VALIDATED::Input", "PATH_VALIDATED::input::x", "PATH_VALIDATED::"):
        with pytest.raises(RemoteProtocolError) as info:
            decode(frame)
        assert info.value.code is ErrorCode.MALFORMED_FRAME
        assert info.value.detail == "PATH_VALIDATED takes input or output"
    with pytest.raises(RemoteProtocolError) as info:
        decode("PATH_VALIDATED")
    assert info.value.detail == "PATH_VALIDATED needs fields"


@pytest.mark.parametrize(
    ("frame", "detail"),
    [
        ("FILE_READY::12a", "offset must be decimal digits"),
        ("FILE_READY::-1", "offset must be decimal digits"),
        ("FILE_READY::" + "9" * 19, "offset must be decimal digits"),
        ("FILE_PROGRESS::5", "FILE_PROGRESS needs 2 fields"),
        ("FILE_PROGRESS::x::5", "bytes_received must be decimal digits"),
        ("FILE_PROGRESS::5::", "size must be decimal digits"),
        (
            "FILE_META::no size at all",
            "FILE_META is {name}::{size}::{sha256}::{chunk_size} (or {name}:{size}:{gui})",
        ),
        (
            f"FILE_META::a::10::{SHA}::x",
            "FILE_META is {name}::{size}::{sha256}::{chunk_size} (or {name}:{size}:{gui})",
        ),
        ("FILE_META::a::b:1:", "a legacy FILE_META name has no '::'"),
        (f"FILE_META::a::1::{SHA}::0", "chunk_size must be an integer >= 1"),
        ("FILE_EXISTS::abc", "sha256 must be 64 hexadecimal digits"),
        ("TRANSFER_ERROR::bad code::x", "code must match [A-Z][A-Z0-9_]{0,63}"),
        (
            'JOB_METRICS::{"validation_ms":"1","file_access_ms":0,"run_s":0,"total_s":0}',
            "validation_ms must be a number in [0, 1e14)",
        ),
        (
            'JOB_METRICS::{"validation_ms":0,"file_access_ms":null,"run_s":0,"total_s":0}',
            "file_access_ms must be a number in [0, 1e14)",
        ),
        (
            'JOB_METRICS::{"validation_ms":0,"file_access_ms":0,"run_s":1' + "0" * 400 + ","
            '"total_s":0}',
            "run_s must be a number in [0, 1e14)",
        ),
        (
            'JOB_METRICS::{"validation_ms":0}',
            "JOB_METRICS needs validation_ms, file_access_ms, run_s, total_s",
        ),
        ("JOB_METRICS::" + "[" * 100_000, "text frame of 100013 bytes exceeds 65536"),
    ],
)
def test_malformed_fields_are_remote_errors_with_a_detail(frame: str, detail: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode(frame)
    assert info.value.detail == detail
    expected = ErrorCode.FRAME_TOO_LARGE if "exceeds" in detail else ErrorCode.MALFORMED_FRAME
    assert info.value.code is expected


def test_deeply_nested_metrics_json_is_malformed_not_a_crash() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode("JOB_METRICS::" + "[" * 16_000)  # within the 64 KiB frame bound
    assert info.value.code is ErrorCode.MALFORMED_FRAME
    assert info.value.detail == "JOB_METRICS is not JSON"


@pytest.mark.parametrize("frame", [123, None, 1.5, ["JOB_START"], object()])
def test_a_frame_that_is_neither_text_nor_bytes_is_malformed(frame: Any) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode(frame)
    assert info.value.code is ErrorCode.MALFORMED_FRAME
    assert info.value.detail == "a frame is text or bytes"


def test_bytes_like_frames_become_immutable_chunks() -> None:
    buffer = bytearray(b"abc")
    chunk = decode(buffer)
    buffer[0] = ord("z")  # the chunk holds a copy
    assert chunk == Chunk(b"abc")
    assert decode(memoryview(b"xyz")) == Chunk(b"xyz")
    assert type(decode(memoryview(b"xyz"))) is Chunk
    assert isinstance(chunk, Chunk)
    assert type(chunk.data) is bytes


def test_unknown_type_is_shown_escaped_and_truncated() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode("\x00\u00e9" + "X" * 100 + "::rest")
    assert info.value.code is ErrorCode.UNKNOWN_MESSAGE
    assert info.value.detail == "unknown message type " + repr("\x00\\xe9" + "X" * 30)


# ---------------------------------------------------------------- signaling frames


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("null", "null"),
        ("true", "a boolean"),
        ("3.5", "a number"),
        ('"register"', "a string"),
        ("[]", "an array"),
    ],
)
def test_non_object_frames_name_their_json_kind(text: str, kind: str) -> None:
    for parse in (sig.parse_client_frame, sig.parse_server_frame):
        with pytest.raises(sig.SignalingError) as info:
            parse(text)
        assert info.value.code == sig.ErrorCode.INVALID_FRAME
        assert info.value.message == f"frame must be a JSON object, not {kind}"
        assert info.value.ref_type is None


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("null", "null"),
        ("false", "a boolean"),
        ("1", "a number"),
        ("[]", "an array"),
        ("{}", "an object"),
    ],
)
def test_non_string_type_field_names_its_json_kind(value: str, kind: str) -> None:
    with pytest.raises(sig.SignalingError) as info:
        sig.parse_client_frame(f'{{"type": {value}}}')
    assert info.value.code == sig.ErrorCode.INVALID_FRAME
    assert info.value.message == f"field 'type' must be a string, not {kind}"


def test_several_field_errors_are_counted() -> None:
    with pytest.raises(sig.SignalingError) as info:
        sig.parse_client_frame('{"type": "offer"}')
    assert info.value.code == sig.ErrorCode.INVALID_FRAME
    assert info.value.ref_type == "offer"
    assert info.value.message == "field 'to' in 'offer' frame: missing (and 1 more error(s))"


def test_unknown_type_error_names_the_type_truncated() -> None:
    long_type = "t" * 100
    with pytest.raises(sig.SignalingError) as info:
        sig.parse_server_frame(json.dumps({"type": long_type}))
    assert info.value.code == sig.ErrorCode.UNKNOWN_TYPE
    assert info.value.ref_type == "t" * 64


def test_unrelayable_json_is_refused() -> None:
    for text in ('{"type": "list_peers", "x": "\\ud800"}', '{"type": "list_peers", "x": 1e999}'):
        with pytest.raises(sig.SignalingError) as info:
            sig.parse_client_frame(text)
        assert info.value.code == sig.ErrorCode.INVALID_JSON
        assert info.value.message.startswith("JSON that cannot be relayed: ")
    with pytest.raises(sig.SignalingError) as info:
        sig.parse_client_frame('{"type": "list_peers", "x": NaN}')
    assert info.value.code == sig.ErrorCode.INVALID_JSON
    assert info.value.message == "invalid JSON: NaN is not valid JSON"


@pytest.mark.parametrize("metadata", [{"gpu": {1, 2}}, {"ratio": float("nan")}, {"b": b"x"}])
def test_register_built_in_code_refuses_metadata_that_is_not_json(metadata: Any) -> None:
    with pytest.raises(ValidationError) as info:
        sig.Register(peer_id="w1", role="worker", metadata=metadata)
    (error,) = info.value.errors(include_url=False)
    assert error["loc"] == ("metadata",)
    assert "metadata is not serializable as JSON" in error["msg"]


def test_register_null_metadata_is_empty() -> None:
    frame = sig.parse_client_frame(
        '{"type":"register","peer_id":"w1","role":"worker","metadata":null}'
    )
    assert isinstance(frame, sig.Register)
    assert frame.metadata == {}


def test_validation_that_recurses_too_deeply_is_an_invalid_frame(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing but SignalingError leaves the parser, even if validation blows the stack."""

    class Bottomless:
        def validate_python(self, obj: object) -> object:
            raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(sig, "_CLIENT_ADAPTER", Bottomless())
    with pytest.raises(sig.SignalingError) as info:
        sig.parse_client_frame('{"type": "list_peers"}')
    assert info.value.code == sig.ErrorCode.INVALID_FRAME
    assert info.value.message == "frame is nested too deeply"
    assert info.value.ref_type == "list_peers"


def test_describe_without_errors_or_without_the_tag_prefix() -> None:
    empty = ValidationError.from_exception_data("Offer", [])
    assert sig._describe(empty, "offer") == "invalid 'offer' frame"
    untagged = ValidationError.from_exception_data(
        "Offer", [{"type": "missing", "loc": ("sdp",), "input": {}}]
    )
    assert sig._describe(untagged, "offer") == "field 'sdp' in 'offer' frame: missing"
    no_loc = ValidationError.from_exception_data(
        "Offer", [{"type": "missing", "loc": (), "input": {}}]
    )
    assert sig._describe(no_loc, "offer") == "field 'type' in 'offer' frame: missing"


def test_error_frame_and_exception_convert_both_ways() -> None:
    error = sig.SignalingError(sig.ErrorCode.PEER_NOT_FOUND, "no peer 'x'", "offer")
    frame = error.to_frame()
    assert frame == sig.ErrorFrame(code="PEER_NOT_FOUND", message="no peer 'x'", ref_type="offer")
    back = frame.to_exception()
    assert (back.code, back.message, back.ref_type) == (
        "PEER_NOT_FOUND",
        "no peer 'x'",
        "offer",
    )
    assert str(back) == "PEER_NOT_FOUND: no peer 'x'"
    assert sig.dump_frame(sig.ErrorFrame(code="X", message="m")) == (
        '{"type":"error","code":"X","message":"m"}'
    )
