"""The data-channel codec: exact frames both ways, every refusal with its code and
detail, the bounds, and the fuzz invariant: any input decodes or raises exactly
RemoteProtocolError, in time linear in its length."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    DEFAULT_LIMITS,
    FRAME_TYPES,
    Chunk,
    EndOfFile,
    ErrorCode,
    FileCancel,
    FileExists,
    FileMeta,
    FileMetaLegacy,
    FileProgress,
    FileProof,
    FileProofRequest,
    FileReady,
    FileReceived,
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
    RelayEnded,
    RelayPart,
    RelayStop,
    RemoteProtocolError,
    ResultsRequest,
    ResultsStored,
    ResultsViaStorage,
    SharedInputPath,
    SharedOutputPath,
    TransferError,
    decode,
    encode,
)
from protocol.auth_messages import AuthChallenge, AuthHello, AuthOk, AuthResponse
from protocol.codec import MESSAGE_TYPES
from protocol.names import check_name
from protocol.testing import (
    file_names,
    frames,
    free_text,
    malformed_frames,
    malformed_frames_with_codes,
    messages,
    paths,
    sha256_hex,
)

SHA = "ab" * 32
LIMITS = DEFAULT_LIMITS
TOP = LIMITS.max_text_frame_bytes
SMALL = Limits(max_text_frame_bytes=300, max_binary_frame_bytes=64, max_path_bytes=40)
QUICK = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def utf8(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def refused(frame: Any, limits: Limits = LIMITS) -> RemoteProtocolError:
    """decode must raise exactly RemoteProtocolError; returns it."""
    with pytest.raises(RemoteProtocolError) as info:
        decode(frame, limits)
    assert type(info.value) is RemoteProtocolError
    assert isinstance(info.value.code, ErrorCode)
    return info.value


# ===================================================================== exact frames

EXACT_FRAMES: list[tuple[str | bytes, Message]] = [
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
    ("JOB_LOG::", JobLog("")),
    (
        'JOB_METRICS::{"validation_ms":1.5,"file_access_ms":2.0,"run_s":3.25,"total_s":4.0}',
        JobMetrics(1.5, 2.0, 3.25, 4.0),
    ),
    ("JOB_COMPLETE::j1::outputs/run1::3::12.35", JobComplete("j1", "outputs/run1", 3, 12.35)),
    ("JOB_COMPLETE::j1::out::put::7::0.00", JobComplete("j1", "out::put", 7, 0.0)),
    ("JOB_COMPLETE::j1::::0::0.01", JobComplete("j1", "", 0, 0.01)),
    (
        "JOB_FAILED::j1::Job command exited with code 2",
        JobFailed("j1", "Job command exited with code 2"),
    ),
    ("JOB_FAILED::j1::a::b", JobFailed("j1", "a::b")),
    ("PROTOCOL_ERROR::WORKER_BUSY::try later", ProtocolErrorFrame("WORKER_BUSY", "try later")),
    ("PROTOCOL_ERROR::FUTURE_CODE::", ProtocolErrorFrame("FUTURE_CODE")),
    ("RESULTS_REQUEST::job-1", ResultsRequest("job-1")),
    ("RESULTS_VIA_STORAGE", ResultsViaStorage()),
    ("RESULTS_STORED::j1::/download/j1", ResultsStored("j1", "/download/j1")),
    ("RESULTS_STORED::j1::/odd::path", ResultsStored("j1", "/odd::path")),
    (f"FILE_META::a::b.bin::10::{SHA}::4096", FileMeta("a::b.bin", 10, SHA, 4096)),
    ("FILE_META::photo one.jpg:1024:gui-7", FileMetaLegacy("photo one.jpg", 1024, "gui-7")),
    ("FILE_META::a:0:", FileMetaLegacy("a", 0, "")),
    ("FILE_META::x:y:5:", FileMetaLegacy("x:y", 5, "")),
    ("FILE_READY::0", FileReady(0)),
    ("FILE_READY::123456789012345678", FileReady(123456789012345678)),
    (f"FILE_EXISTS::{SHA}", FileExists(SHA)),
    (
        "FILE_PROOF_REQUEST::" + "ab" * 16 + "::0+4096,99+1,1000000+65536",
        FileProofRequest("ab" * 16, ((0, 4096), (99, 1), (1000000, 65536))),
    ),
    ("FILE_PROOF_REQUEST::" + "ab" * 16 + "::7+3", FileProofRequest("AB" * 16, ((7, 3),))),
    (f"FILE_PROOF::{SHA}", FileProof(SHA)),
    ("END_OF_FILE", EndOfFile()),
    ("FILE_PROGRESS::5::10", FileProgress(5, 10)),
    (f"FILE_RECEIVED::{SHA}", FileReceived(SHA)),
    (
        "TRANSFER_ERROR::DISK_FULL::no space: 0 bytes left",
        TransferError("DISK_FULL", "no space: 0 bytes left"),
    ),
    ("TRANSFER_ERROR::CANCELLED::", TransferError("CANCELLED")),
    ("FILE_CANCEL", FileCancel()),
    (
        f"RELAY_PART::{SHA}::1048576::2097152::1048576::AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
        "::AAECAwQFBg::0123456789abcdef0123456789abcdef::tok.en~_-1",
        RelayPart(
            SHA,
            1048576,
            2097152,
            1048576,
            bytes(range(32)),
            bytes(range(7)),
            "0123456789abcdef0123456789abcdef",
            "tok.en~_-1",
        ),
    ),
    (f"RELAY_STOP::{SHA}", RelayStop(SHA)),
    (f"RELAY_ENDED::{SHA}::4096::RELAY_GONE::", RelayEnded(SHA, 4096, "RELAY_GONE")),
    (
        f"RELAY_ENDED::{SHA}::0::RELAY_UNREACHABLE::after 5 tries: a::b",
        RelayEnded(SHA, 0, "RELAY_UNREACHABLE", "after 5 tries: a::b"),
    ),
    (
        "AUTH_HELLO::AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=::"
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        AuthHello(bytes(32), bytes(range(32))),
    ),
    (
        "AUTH_CHALLENGE::" + "/" * 42 + "8=::"
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=::AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBka"
        "GxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==",
        AuthChallenge(b"\xff" * 32, bytes(range(32)), bytes(range(64))),
    ),
    (f"AUTH_RESPONSE::{'A' * 86}==", AuthResponse(bytes(64))),
    (f"AUTH_OK::{'ab' * 32}", AuthOk("ab" * 32)),
    (b"\x00\x01", Chunk(b"\x00\x01")),
    (b"", Chunk(b"")),
]


@pytest.mark.parametrize(("frame", "message"), EXACT_FRAMES, ids=[repr(f) for f, _ in EXACT_FRAMES])
def test_exact_frames_decode_and_encode(frame: str | bytes, message: Message) -> None:
    assert decode(frame) == message
    assert type(decode(frame)) is type(message)
    assert encode(message) == frame


def test_the_exact_frames_show_every_message_type() -> None:
    assert {type(message) for _, message in EXACT_FRAMES} == set(MESSAGE_TYPES)
    assert {f.partition("::")[0] for f, _ in EXACT_FRAMES if isinstance(f, str)} == FRAME_TYPES


def test_a_digest_in_upper_case_is_decoded_and_sent_back_in_lower_case() -> None:
    message = decode(f"FILE_RECEIVED::{SHA.upper()}")
    assert message == FileReceived(SHA)
    assert encode(message) == f"FILE_RECEIVED::{SHA}"


def test_a_proof_nonce_in_upper_case_is_decoded_and_sent_back_in_lower_case() -> None:
    message = decode("FILE_PROOF_REQUEST::" + "AB" * 16 + "::7+3")
    assert message == FileProofRequest("ab" * 16, ((7, 3),))
    assert encode(message) == "FILE_PROOF_REQUEST::" + "ab" * 16 + "::7+3"


def test_encoding_something_that_is_not_a_frame_is_a_local_error() -> None:
    class Unframed(Message):
        __slots__ = ()

    for message in (Message(), Unframed()):
        with pytest.raises(LocalProtocolError) as info:
            encode(message)
        assert info.value.code is ErrorCode.UNKNOWN_MESSAGE
        assert info.value.detail == f"cannot encode {type(message).__name__}"


# ===================================================================== refusals

MAL, BAD_ID, BIG = ErrorCode.MALFORMED_FRAME, ErrorCode.INVALID_JOB_ID, ErrorCode.FRAME_TOO_LARGE
_META_FORMS = "FILE_META is {name}::{size}::{sha256}::{chunk_size} (or {name}:{size}:{gui})"
_ID_RULE = "job_id must match [A-Za-z0-9._-]{1,64}, not only dots"
_PROOF_RULE = "FILE_PROOF_REQUEST is {nonce}::{offset}+{length}[,{offset}+{length}...]"
_RANGE_RULE = "a range is 1 to 65536 bytes, below 10^18"
_CODE_RULE = "code must match [A-Z][A-Z0-9_]{0,63}"
_METRICS = 'JOB_METRICS::{"validation_ms":%s,"file_access_ms":%s,"run_s":%s,"total_s":0}'
_METRICS_NEED = "JOB_METRICS needs validation_ms, file_access_ms, run_s, total_s"


def _range(name: str) -> str:
    return f"{name} must be a number in [0, 1e14)"


@pytest.mark.parametrize(
    ("frame", "code", "detail"),
    [
        ("HELLO", ErrorCode.UNKNOWN_MESSAGE, "unknown message type 'HELLO'"),
        ("", ErrorCode.UNKNOWN_MESSAGE, "unknown message type ''"),
        ("job_start", ErrorCode.UNKNOWN_MESSAGE, "unknown message type 'job_start'"),
        ("JOB_START::now", MAL, "JOB_START takes no fields"),
        ("JOB_START::", MAL, "JOB_START takes no fields"),
        ("JOB_CANCEL::x", MAL, "JOB_CANCEL takes no fields"),
        ("RESULTS_VIA_STORAGE::now", MAL, "RESULTS_VIA_STORAGE takes no fields"),
        ("SHARED_STORAGE_JOB::stop", MAL, "SHARED_STORAGE_JOB takes 'start'"),
        ("SHARED_STORAGE_JOB", MAL, "SHARED_STORAGE_JOB takes 'start'"),
        ("SHARED_INPUT_PATH", MAL, "SHARED_INPUT_PATH needs fields"),
        ("SHARED_INPUT_PATH::", MAL, "path must not be empty"),
        ("JOB_ID::has space", BAD_ID, _ID_RULE),
        ("JOB_ID::" + "a" * 65, BAD_ID, _ID_RULE),
        ("JOB_ID::", BAD_ID, _ID_RULE),
        ("JOB_ID", MAL, "JOB_ID needs fields"),
        ("RESULTS_REQUEST::../etc", BAD_ID, _ID_RULE),
        ("PATH_VALIDATED", MAL, "PATH_VALIDATED needs fields"),
        ("PATH_VALIDATED::Input", MAL, "PATH_VALIDATED takes input or output"),
        ("PATH_VALIDATED::input::x", MAL, "PATH_VALIDATED takes input or output"),
        ("PATH_VALIDATED::", MAL, "PATH_VALIDATED takes input or output"),
        ("JOB_COMPLETE::j::out::x::1.0", MAL, "bad file_count or total_mb"),
        ("JOB_COMPLETE::j::out::1::1.", MAL, "bad file_count or total_mb"),
        ("JOB_COMPLETE::j::1::2", MAL, "JOB_COMPLETE needs 4 fields"),
        ("JOB_COMPLETE::j", MAL, "JOB_COMPLETE needs 4 fields"),
        ("JOB_FAILED::j", MAL, "JOB_FAILED needs job_id and reason"),
        ("JOB_FAILED::j::", MAL, "reason must not be empty"),
        ("JOB_METRICS::{not json", MAL, "JOB_METRICS is not JSON"),
        ("JOB_METRICS::[1,2]", MAL, _METRICS_NEED),
        ('JOB_METRICS::{"validation_ms":0}', MAL, _METRICS_NEED),
        (_METRICS % ('"1"', 0, 0), MAL, _range("validation_ms")),
        (_METRICS % (0, "null", 0), MAL, _range("file_access_ms")),
        (_METRICS % (0, 0, "1" + "0" * 400), MAL, _range("run_s")),
        (_METRICS % (-1, 0, 0), MAL, _range("validation_ms")),
        ("PROTOCOL_ERROR::lower::x", MAL, _CODE_RULE),
        ("TRANSFER_ERROR::bad code::x", MAL, _CODE_RULE),
        ("JOB_LOG::two\nlines", MAL, "line must be a single line"),
        ("RESULTS_STORED", MAL, "RESULTS_STORED needs fields"),
        ("RESULTS_STORED::j1", MAL, "RESULTS_STORED needs job_id and download_path"),
        ("RESULTS_STORED::j1::", MAL, "download_path must not be empty"),
        ("RESULTS_STORED::j1::/a\nb", MAL, "download_path must be a single line"),
        ("RESULTS_STORED::bad id::/download/x", BAD_ID, _ID_RULE),
        ("FILE_READY::12a", MAL, "offset must be decimal digits"),
        ("FILE_PROOF_REQUEST::" + "0" * 32, MAL, _PROOF_RULE),
        ("FILE_PROOF_REQUEST::" + "0" * 32 + "::0+1,", MAL, _PROOF_RULE),
        ("FILE_PROOF_REQUEST::" + "0" * 31 + "::0+1", MAL, "nonce must be 32 hexadecimal digits"),
        ("FILE_PROOF_REQUEST::" + "0" * 32 + "::0+0", MAL, "length must be an integer >= 1"),
        ("FILE_PROOF_REQUEST::" + "0" * 32 + "::0+65537", MAL, _RANGE_RULE),
        ("FILE_PROOF_REQUEST::" + "0" * 32 + "::" + ",".join(["0+1"] * 17), MAL, _PROOF_RULE),
        ("FILE_PROOF::" + "0" * 63, MAL, "sha256 must be 64 hexadecimal digits"),
        ("FILE_READY::-1", MAL, "offset must be decimal digits"),
        ("FILE_READY::" + "9" * 19, MAL, "offset must be decimal digits"),
        ("FILE_PROGRESS::5", MAL, "FILE_PROGRESS needs 2 fields"),
        ("FILE_PROGRESS::x::5", MAL, "bytes_received must be decimal digits"),
        ("FILE_PROGRESS::5::", MAL, "size must be decimal digits"),
        ("FILE_META::no size at all", MAL, _META_FORMS),
        (f"FILE_META::a::10::{SHA}::x", MAL, _META_FORMS),
        ("FILE_META::x::1::zz::1", MAL, _META_FORMS),
        ("FILE_META::a::b:1:", MAL, "a legacy FILE_META name has no '::'"),
        (f"FILE_META::a::1::{SHA}::0", MAL, "chunk_size must be an integer >= 1"),
        ("FILE_EXISTS::abc", MAL, "sha256 must be 64 hexadecimal digits"),
        ("FILE_RECEIVED", MAL, "FILE_RECEIVED needs fields"),
        (
            "SHARED_INPUT_PATH::" + "a" * 4097,
            ErrorCode.PATH_TOO_LONG,
            "path longer than 4096 bytes",
        ),
        ("JOB_LOG::" + "x" * 70_000, BIG, "text frame of 70009 bytes exceeds 65536"),
        ("JOB_METRICS::" + "[" * 100_000, BIG, "text frame of 100013 bytes exceeds 65536"),
        (b"x" * (256 * 1024 + 1), BIG, "binary frame of 262145 bytes exceeds 262144"),
    ],
)
def test_invalid_frames_are_remote_errors_with_a_code_and_detail(
    frame: str | bytes, code: ErrorCode, detail: str
) -> None:
    error = refused(frame)
    assert (error.code, error.detail) == (code, detail)


def test_deeply_nested_metrics_json_is_malformed_not_a_crash() -> None:
    error = refused("JOB_METRICS::" + "[" * 16_000)  # within the 64 KiB frame bound
    assert (error.code, error.detail) == (ErrorCode.MALFORMED_FRAME, "JOB_METRICS is not JSON")


@pytest.mark.parametrize("frame", [123, None, 1.5, ["JOB_START"], object()])
def test_a_frame_that_is_neither_text_nor_bytes_is_malformed(frame: Any) -> None:
    error = refused(frame)
    assert (error.code, error.detail) == (ErrorCode.MALFORMED_FRAME, "a frame is text or bytes")


def test_bytes_like_frames_become_immutable_chunks() -> None:
    buffer = bytearray(b"abc")
    chunk = decode(buffer)
    buffer[0] = ord("z")  # the chunk holds a copy
    assert chunk == Chunk(b"abc")
    assert decode(memoryview(b"xyz")) == Chunk(b"xyz")
    assert type(decode(memoryview(b"xyz"))) is Chunk
    assert type(chunk.data) is bytes  # type: ignore[attr-defined]


def test_unknown_type_is_shown_escaped_and_truncated() -> None:
    error = refused("\x00\u00e9" + "X" * 100 + "::rest")
    assert error.code is ErrorCode.UNKNOWN_MESSAGE
    assert error.detail == "unknown message type " + repr("\x00\\xe9" + "X" * 30)


# ===================================================================== bounds


def test_limits_are_configurable() -> None:
    small = Limits(max_text_frame_bytes=32, max_binary_frame_bytes=4, max_path_bytes=3)
    assert refused("SHARED_INPUT_PATH::abcd", small).code == ErrorCode.PATH_TOO_LONG
    # 49 bytes of UTF-8 in 29 characters: the size is counted in bytes
    assert refused("JOB_LOG::" + "é" * 20, small).code == ErrorCode.FRAME_TOO_LARGE
    assert refused(b"12345", small).code == ErrorCode.FRAME_TOO_LARGE
    assert decode(b"1234", small) == Chunk(b"1234")
    assert decode("SHARED_INPUT_PATH::abc", small) == SharedInputPath("abc")
    assert decode("JOB_LOG::" + "x" * 23, small) == JobLog("x" * 23)  # exactly 32 bytes
    assert refused("JOB_LOG::" + "x" * 24, small).detail == "text frame of 33 bytes exceeds 32"


def test_the_size_is_checked_before_the_type_and_the_fields_before_the_type() -> None:
    small = Limits(max_text_frame_bytes=8, max_fields=2)
    assert refused("NOPE::" + "x" * 10, small).code == ErrorCode.FRAME_TOO_LARGE
    assert refused("N::a::b", small).code == ErrorCode.TOO_MANY_FIELDS
    assert refused("N::a", small).code == ErrorCode.UNKNOWN_MESSAGE


def test_field_count_is_bounded() -> None:
    limits = Limits(max_fields=4)
    assert decode("JOB_LOG::a::b::c", limits) == JobLog("a::b::c")
    error = refused("JOB_LOG::a::b::c::d", limits)
    assert (error.code, error.detail) == (ErrorCode.TOO_MANY_FIELDS, "5 fields exceed 4")
    assert refused("SHARED_INPUT_PATH::" + "a::" * 2000).code == ErrorCode.TOO_MANY_FIELDS


def test_path_bound_counts_utf8_bytes() -> None:
    limits = Limits(max_path_bytes=4)
    assert decode("SHARED_INPUT_PATH::éé", limits) == SharedInputPath("éé")
    assert refused("SHARED_OUTPUT_PATH::ééé", limits).code == ErrorCode.PATH_TOO_LONG


@pytest.mark.parametrize(
    ("prefix", "build"),
    [
        ("JOB_LOG::", JobLog),
        ("PATH_ERROR::", PathError),
        (f"JOB_FAILED::{'j' * 64}::", lambda text: JobFailed("j" * 64, text)),
        ("PROTOCOL_ERROR::WORKER_BUSY::", lambda text: ProtocolErrorFrame("WORKER_BUSY", text)),
        ("TRANSFER_ERROR::HASH_MISMATCH::", lambda text: TransferError("HASH_MISMATCH", text)),
    ],
    ids=["JOB_LOG", "PATH_ERROR", "JOB_FAILED", "PROTOCOL_ERROR", "TRANSFER_ERROR"],
)
@settings(QUICK, max_examples=5)
@given(data=st.data())
def test_a_free_field_can_fill_the_frame_exactly(
    prefix: str, build: Callable[[str], Message], data: st.DataObject
) -> None:
    n = TOP - utf8(prefix)
    text = data.draw(free_text(min_bytes=n, max_bytes=n, max_separators=LIMITS.max_fields - 3))
    message = build(text)
    frame = encode(message)
    assert frame == prefix + text and utf8(frame) == TOP
    assert decode(frame) == message
    assert refused(frame + "x").code == ErrorCode.FRAME_TOO_LARGE


@pytest.mark.parametrize("cls", [SharedInputPath, SharedOutputPath])
@settings(QUICK, max_examples=5)
@given(data=st.data())
def test_paths_at_the_maximum_length(
    cls: type[SharedInputPath | SharedOutputPath], data: st.DataObject
) -> None:
    n = LIMITS.max_path_bytes
    path = data.draw(paths(min_bytes=n, max_bytes=n))
    assert utf8(path) == n
    assert decode(encode(cls(path))) == cls(path)
    assert refused(f"{cls.TYPE}::{path}x").code == ErrorCode.PATH_TOO_LONG
    done = JobComplete("j", path, 3, 1.5)  # JOB_COMPLETE carries one too, parsed from the right
    assert decode(encode(done)) == done


@settings(QUICK, max_examples=10)
@given(file_names(min_bytes=255), sha256_hex(), st.integers(0, 10**18 - 1))
def test_file_names_at_the_maximum_length(name: str, sha: str, size: int) -> None:
    assert utf8(name) == 255
    check_name(name)
    meta = FileMeta(name, size, sha, 65536)
    assert decode(encode(meta)) == meta


def test_a_chunk_at_the_maximum_length() -> None:
    data = bytes(range(256)) * (LIMITS.max_binary_frame_bytes // 256)
    assert decode(data) == Chunk(data)
    assert refused(data + b"!").code == ErrorCode.FRAME_TOO_LARGE


# ===================================================================== properties


@settings(QUICK, max_examples=300)
@given(messages())
def test_decode_inverts_encode(message: Message) -> None:
    frame = encode(message)
    assert decode(frame) == message
    assert encode(decode(frame)) == frame
    if isinstance(frame, str):
        assert utf8(frame) <= TOP and frame.count("::") < LIMITS.max_fields
    else:
        assert len(frame) <= LIMITS.max_binary_frame_bytes


@settings(QUICK, max_examples=100)
@given(frames(limits=SMALL))
def test_frames_respect_custom_limits(frame: str | bytes) -> None:
    message = decode(frame, SMALL)
    assert encode(message) == frame
    if isinstance(message, SharedInputPath | SharedOutputPath):
        assert utf8(message.path) <= SMALL.max_path_bytes


@settings(QUICK, max_examples=300)
@given(malformed_frames_with_codes())
def test_malformed_frames_are_refused_with_their_code(pair: tuple[str | bytes, ErrorCode]) -> None:
    frame, code = pair
    assert refused(frame).code == code


@settings(QUICK, max_examples=150)
@given(malformed_frames_with_codes(limits=SMALL))
def test_malformed_frames_against_small_limits(pair: tuple[str | bytes, ErrorCode]) -> None:
    frame, code = pair
    assert refused(frame, SMALL).code == code


@settings(QUICK, max_examples=50)
@given(malformed_frames())
def test_malformed_frames_without_codes_are_refused(frame: str | bytes) -> None:
    refused(frame)


_ANY_CHAR = st.characters(blacklist_categories=())  # surrogates and controls included
_KNOWN_PREFIXED = st.builds(
    lambda type_, sep, rest: type_ + sep + rest,
    st.sampled_from(sorted(FRAME_TYPES)),
    st.sampled_from(["::", ":", "", "::::"]),
    st.text(_ANY_CHAR, max_size=200),
)


@settings(QUICK, max_examples=400)
@given(
    st.one_of(
        st.text(_ANY_CHAR, max_size=300),
        _KNOWN_PREFIXED,
        st.binary(max_size=300),
        st.builds(lambda f, cut: f[:cut], frames(), st.integers(0, 200)),
        st.builds(
            lambda f, junk: f + junk,
            frames().filter(lambda f: isinstance(f, str)),
            st.text(_ANY_CHAR, max_size=20),
        ),
    )
)
def test_decode_of_anything_returns_a_message_or_raises_a_remote_error(
    frame: str | bytes,
) -> None:
    try:
        result = decode(frame)
    except ProtocolError as exc:
        assert type(exc) is RemoteProtocolError
        assert isinstance(exc.code, ErrorCode)
    else:
        assert type(result) in MESSAGE_TYPES
        assert decode(encode(result)) == result


# ===================================================================== linear time


def at_length(prefix: str, unit: str, size: int) -> str:
    """``prefix`` then ``unit`` repeated, exactly ``size`` bytes (units are ASCII)."""
    body = unit * ((size - len(prefix)) // len(unit) + 1)
    return prefix + body[: size - len(prefix)]


_UNITS = [":", "::", "a:", "a::", "0:", "0::", "9", "[", '{"a":', " ", "\\"]
ADVERSARIAL: dict[str, Callable[[int], str]] = {
    "colons": lambda n: at_length("", "::", n),
    "single-colons": lambda n: at_length("", ":", n),
    "FILE_META-a:": lambda n: at_length("FILE_META::", "a:", n),
    "FILE_META-digits": lambda n: at_length("FILE_META::a:", "1", n - 1) + ":",
    "JOB_METRICS-nesting": lambda n: at_length("JOB_METRICS::", "[", n),
    "JOB_METRICS-objects": lambda n: at_length("JOB_METRICS::", '{"validation_ms":', n),
    **{
        f"{type_}-{unit}": (lambda t, u: lambda n: at_length(f"{t}::", u, n))(type_, unit)
        for type_ in sorted(FRAME_TYPES)
        for unit in _UNITS
    },
}


def python_calls(frame: str) -> int:
    """How many Python-level and C-level calls decode(frame) makes (no timing)."""
    count = 0

    def profile(_frame: Any, event: str, _arg: Any) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    enabled = gc.isenabled()
    gc.disable()  # no collection may run (and count) finalizers of unrelated garbage
    sys.setprofile(profile)
    try:
        decode(frame)
    except RemoteProtocolError:
        pass
    finally:
        sys.setprofile(None)
        if enabled:
            gc.enable()
    return count


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_frames_at_the_length_limit(name: str) -> None:
    # 64 KiB of colons, separators and nesting end in a message or a RemoteProtocolError.
    # No timing: decoding the full frame must not make more calls than a 20 KB frame of
    # the same pattern, so a parser that loops in Python per character or per separator
    # fails here. (Work inside C code, such as regex backtracking, is not counted.)
    frame = ADVERSARIAL[name](TOP)
    assert utf8(frame) == TOP
    try:
        result = decode(frame)
    except ProtocolError as exc:
        assert type(exc) is RemoteProtocolError
    else:
        assert isinstance(result, Message)
    period = 2 * 3 * 5 * 17  # a multiple of every unit's length: the same tail, only shorter
    shorter = ADVERSARIAL[name](TOP - period * ((TOP - 20_000) // period))
    assert frame.endswith(shorter[-40:])
    assert python_calls(frame) <= python_calls(shorter)
