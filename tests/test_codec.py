"""The data-channel codec: exact frames, round trips, and every refusal with its code."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import (
    Chunk,
    ErrorCode,
    JobCancel,
    JobComplete,
    JobFailed,
    JobId,
    JobLog,
    JobMetrics,
    JobStart,
    Limits,
    LocalProtocolError,
    Message,
    PathError,
    PathValidated,
    ProtocolError,
    ProtocolErrorFrame,
    RemoteProtocolError,
    ResultsStored,
    ResultsViaStorage,
    SharedInputPath,
    SharedOutputPath,
    decode,
    encode,
)

EXACT_FRAMES: list[tuple[str, Message]] = [
    ("JOB_ID::train-2026.01_a", JobId("train-2026.01_a")),
    ("SHARED_INPUT_PATH::inputs/train.zip", SharedInputPath("inputs/train.zip")),
    ("SHARED_INPUT_PATH::odd::name/with spaces.zip", SharedInputPath("odd::name/with spaces.zip")),
    ("SHARED_OUTPUT_PATH::outputs/run1", SharedOutputPath("outputs/run1")),
    ("JOB_START", JobStart()),
    ("SHARED_STORAGE_JOB::start", JobStart(legacy=True)),
    ("JOB_CANCEL", JobCancel()),
    ("PATH_VALIDATED::input", PathValidated("input")),
    ("PATH_VALIDATED::output", PathValidated("output")),
    ("PATH_ERROR::Input path does not exist: a/b", PathError("Input path does not exist: a/b")),
    ("JOB_LOG::epoch 1 :: loss=0.5", JobLog("epoch 1 :: loss=0.5")),
    (
        'JOB_METRICS::{"validation_ms":1.5,"file_access_ms":2.0,"run_s":3.25,"total_s":4.0}',
        JobMetrics(1.5, 2.0, 3.25, 4.0),
    ),
    ("JOB_COMPLETE::j1::outputs/run1::3::12.35", JobComplete("j1", "outputs/run1", 3, 12.35)),
    ("JOB_COMPLETE::j1::out::put::7::0.00", JobComplete("j1", "out::put", 7, 0.0)),
    (
        "JOB_FAILED::j1::Job command exited with code 2",
        JobFailed("j1", "Job command exited with code 2"),
    ),
    ("PROTOCOL_ERROR::WORKER_BUSY::try later", ProtocolErrorFrame("WORKER_BUSY", "try later")),
    ("RESULTS_VIA_STORAGE", ResultsViaStorage()),
    ("RESULTS_STORED::j1::/download/j1", ResultsStored("j1", "/download/j1")),
    ("RESULTS_STORED::j1::/odd::path", ResultsStored("j1", "/odd::path")),
]


@pytest.mark.parametrize(("frame", "message"), EXACT_FRAMES, ids=[f for f, _ in EXACT_FRAMES])
def test_exact_frames_decode_and_encode(frame: str, message: Message) -> None:
    assert decode(frame) == message
    assert encode(message) == frame


def test_binary_frame_is_a_chunk() -> None:
    assert decode(b"\x00\x01") == Chunk(b"\x00\x01")
    assert encode(Chunk(b"abc")) == b"abc"


def test_total_mb_has_two_decimals() -> None:
    assert JobComplete.mb_from_bytes(12_345_678) == 12.35
    assert encode(JobComplete("j", "o", 1, JobComplete.mb_from_bytes(5_000))) == (
        "JOB_COMPLETE::j::o::1::0.01"
    )


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("HELLO", ErrorCode.UNKNOWN_MESSAGE),
        ("", ErrorCode.UNKNOWN_MESSAGE),
        ("job_start", ErrorCode.UNKNOWN_MESSAGE),
        ("JOB_START::now", ErrorCode.MALFORMED_FRAME),
        ("JOB_CANCEL::x", ErrorCode.MALFORMED_FRAME),
        ("SHARED_STORAGE_JOB::stop", ErrorCode.MALFORMED_FRAME),
        ("SHARED_INPUT_PATH", ErrorCode.MALFORMED_FRAME),
        ("SHARED_INPUT_PATH::", ErrorCode.MALFORMED_FRAME),
        ("JOB_ID::has space", ErrorCode.INVALID_JOB_ID),
        ("JOB_ID::" + "a" * 65, ErrorCode.INVALID_JOB_ID),
        ("JOB_ID::", ErrorCode.INVALID_JOB_ID),
        ("JOB_ID::a/b", ErrorCode.INVALID_JOB_ID),
        ("PATH_VALIDATED::both", ErrorCode.MALFORMED_FRAME),
        ("JOB_COMPLETE::j::out::x::1.0", ErrorCode.MALFORMED_FRAME),
        ("JOB_COMPLETE::j::1::2", ErrorCode.MALFORMED_FRAME),
        ("JOB_COMPLETE::j", ErrorCode.MALFORMED_FRAME),
        ("JOB_FAILED::j", ErrorCode.MALFORMED_FRAME),
        ("JOB_FAILED::j::", ErrorCode.MALFORMED_FRAME),
        ("JOB_METRICS::{not json", ErrorCode.MALFORMED_FRAME),
        ('JOB_METRICS::{"validation_ms":1}', ErrorCode.MALFORMED_FRAME),
        (
            'JOB_METRICS::{"validation_ms":-1,"file_access_ms":0,"run_s":0,"total_s":0}',
            ErrorCode.MALFORMED_FRAME,
        ),
        ("JOB_METRICS::[1,2]", ErrorCode.MALFORMED_FRAME),
        ("PROTOCOL_ERROR::lower::x", ErrorCode.MALFORMED_FRAME),
        ("JOB_LOG::two\nlines", ErrorCode.MALFORMED_FRAME),
        ("RESULTS_VIA_STORAGE::now", ErrorCode.MALFORMED_FRAME),
        ("RESULTS_STORED", ErrorCode.MALFORMED_FRAME),
        ("RESULTS_STORED::j1", ErrorCode.MALFORMED_FRAME),
        ("RESULTS_STORED::j1::", ErrorCode.MALFORMED_FRAME),
        ("RESULTS_STORED::j1::/a\nb", ErrorCode.MALFORMED_FRAME),
        ("RESULTS_STORED::bad id::/download/x", ErrorCode.INVALID_JOB_ID),
        ("SHARED_INPUT_PATH::" + "a" * 4097, ErrorCode.PATH_TOO_LONG),
        ("JOB_LOG::" + "x" * 70_000, ErrorCode.FRAME_TOO_LARGE),
    ],
)
def test_invalid_frames_raise_remote_errors_with_codes(frame: str, code: ErrorCode) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode(frame)
    assert info.value.code == code


def test_limits_are_configurable() -> None:
    small = Limits(max_text_frame_bytes=32, max_binary_frame_bytes=4, max_path_bytes=3)
    with pytest.raises(RemoteProtocolError) as info:
        decode("SHARED_INPUT_PATH::abcd", small)
    assert info.value.code == ErrorCode.PATH_TOO_LONG
    with pytest.raises(RemoteProtocolError) as info:
        decode("JOB_LOG::" + "é" * 20, small)  # 49 bytes of UTF-8, 29 characters
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    with pytest.raises(RemoteProtocolError) as info:
        decode(b"12345", small)
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    assert decode("SHARED_INPUT_PATH::abc", small) == SharedInputPath("abc")


def test_field_count_is_bounded() -> None:
    limits = Limits(max_fields=4)
    assert decode("JOB_LOG::a::b::c", limits) == JobLog("a::b::c")
    with pytest.raises(RemoteProtocolError) as info:
        decode("JOB_LOG::a::b::c::d", limits)
    assert info.value.code == ErrorCode.TOO_MANY_FIELDS
    with pytest.raises(RemoteProtocolError) as info:
        decode("SHARED_INPUT_PATH::" + "a::" * 2000)
    assert info.value.code == ErrorCode.TOO_MANY_FIELDS


def test_path_bound_counts_utf8_bytes() -> None:
    limits = Limits(max_path_bytes=4)
    assert decode("SHARED_INPUT_PATH::éé", limits) == SharedInputPath("éé")
    with pytest.raises(RemoteProtocolError):
        decode("SHARED_INPUT_PATH::ééé", limits)


def test_building_invalid_messages_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError) as info:
        JobId("not valid!")
    assert info.value.code == ErrorCode.INVALID_JOB_ID
    with pytest.raises(LocalProtocolError):
        JobComplete("j", "o", -1, 1.0)
    with pytest.raises(LocalProtocolError):
        JobMetrics(float("nan"), 0, 0, 0)
    with pytest.raises(LocalProtocolError):
        JobLog("a\nb")
    with pytest.raises(LocalProtocolError):
        PathValidated("sideways")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ProtocolError(ErrorCode.INTERNAL_ERROR, "abstract")


def test_messages_are_frozen() -> None:
    message = SharedInputPath("a")
    with pytest.raises(AttributeError):
        message.path = "b"  # type: ignore[misc]


job_ids = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)
free_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"),
    min_size=1,
    max_size=300,
).map(lambda s: s if s.strip() else s + "x")
paths = st.one_of(free_text, st.sampled_from(["a::b", "::", "a/::/b", " ", "ü/ß/中文.zip"]))
messages = st.one_of(
    job_ids.map(JobId),
    paths.map(SharedInputPath),
    paths.map(SharedOutputPath),
    st.booleans().map(lambda legacy: JobStart(legacy=legacy)),
    st.just(JobCancel()),
    st.sampled_from(["input", "output"]).map(PathValidated),
    free_text.map(PathError),
    free_text.map(JobLog),
    st.builds(
        JobMetrics,
        *[st.floats(min_value=0, max_value=1e9, allow_nan=False) for _ in range(4)],
    ),
    st.builds(
        JobComplete,
        job_ids,
        paths,
        st.integers(min_value=0, max_value=10**12),
        st.floats(min_value=0, max_value=1e9, allow_nan=False),
    ),
    st.builds(JobFailed, job_ids, free_text),
    st.builds(
        ProtocolErrorFrame, st.sampled_from([c.value for c in ErrorCode]), free_text | st.just("")
    ),
    st.binary(max_size=1024).map(Chunk),
)


@settings(max_examples=400)
@given(messages)
def test_decode_encode_round_trip(message: Message) -> None:
    assert decode(encode(message)) == message


@settings(max_examples=400)
@given(st.one_of(st.text(max_size=500), st.binary(max_size=500)))
def test_decode_of_anything_is_a_message_or_a_protocol_error(frame: str | bytes) -> None:
    try:
        result = decode(frame)
    except RemoteProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
    else:
        assert isinstance(result, Message)


def test_results_stored_round_trips_and_refuses_bad_fields() -> None:
    message = ResultsStored("job-0123456789ab", "/download/job-0123456789ab")
    assert decode(encode(message)) == message
    with pytest.raises(LocalProtocolError) as info:
        ResultsStored("job-1", "")
    assert info.value.code == ErrorCode.MALFORMED_FRAME
    with pytest.raises(LocalProtocolError) as info:
        ResultsStored("../x", "/download/x")
    assert info.value.code == ErrorCode.INVALID_JOB_ID
    assert decode(encode(ResultsViaStorage())) == ResultsViaStorage()
