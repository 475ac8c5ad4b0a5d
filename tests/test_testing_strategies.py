"""The public strategies of protocol.testing themselves (field values, messages and
frames, malformed frames): each generates what its documentation promises, within its
bounds and limits, and every variant it offers does come up.

Each test draws until every variant it expects has come up (``draw_until``), and checks
every example drawn on the way.
"""

from __future__ import annotations

import inspect
import re
import unicodedata
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
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
    Message,
    PathError,
    PathValidated,
    ProtocolErrorFrame,
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
from protocol.messages import JOB_ID_PATTERN
from protocol.names import InvalidNameError, check_name
from protocol.relay_messages import RelayEnded, RelayPart, RelayStop
from protocol.testing import (
    MESSAGE_STRATEGIES,
    client_messages,
    file_names,
    frames,
    free_text,
    job_ids,
    malformed_frames,
    malformed_frames_with_codes,
    messages,
    paths,
    sha256_hex,
    worker_messages,
)
from protocol.testing import text as text_module
from protocol.testing.text import (
    _plain_path,
    counts,
    fill,
    fit,
    repeat_bytes,
    sha256_of,
    sized,
    thin,
    worker_job_ids,
)
from protocol.testing.valid import codes, frame_budget
from tests.protocol_helpers import draw_until

T = TypeVar("T")

LIMITS = DEFAULT_LIMITS
TOP = LIMITS.max_text_frame_bytes
SMALL = Limits(max_text_frame_bytes=300, max_binary_frame_bytes=64, max_path_bytes=40)
FEW = Limits(max_text_frame_bytes=2000, max_binary_frame_bytes=64, max_path_bytes=200, max_fields=6)
ALL_LIMITS = pytest.mark.parametrize(
    "limits", [LIMITS, SMALL, FEW], ids=["default", "small", "few-fields"]
)
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def utf8(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def refused_with(frame: str | bytes, limits: Limits = LIMITS) -> ErrorCode:
    with pytest.raises(RemoteProtocolError) as info:
        decode(frame, limits)
    return ErrorCode(info.value.code)


# ===================================================================== helpers of text.py


def test_the_text_helpers() -> None:
    assert fit("ééé", 4) == "éé" and fit("ééé", 5) == "éé" and fit("abc", 9) == "abc"
    assert fit("abc", -1) == ""
    assert fill("é", 5) == "ééx" and fill("", 3) == "xxx" and fill("ab", 0) == ""
    assert fill("中", 4, pad="p") == "中p"
    assert repeat_bytes(b"ab", 5) == b"ababa" and repeat_bytes(b"", 2) == b"\x00\x00"
    assert thin("a::b::c::d", 1) == "a::b--c--d"
    assert thin("a::b", 3) == "a::b" and thin("a::b", -1) == "a--b"
    assert sha256_of(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert utf8(thin("x::" * 50, 4)) == utf8("x::" * 50)  # the same length


def test_sized_clamps_and_sometimes_fills_to_the_maximum() -> None:
    found = draw_until(
        sized(st.text(max_size=30), 3, 12, sep="/"),
        {"max", "shorter"},
        lambda t: {"max" if utf8(t) == 12 else "shorter"},
        at_least=30,
    )
    assert all(3 <= utf8(t) <= 12 for t in found)


@pytest.mark.parametrize(("low", "high"), [(1, 512), (1, 6), (30, 30), (100, 4000)])
def test_free_text_is_single_line_and_within_its_bounds(low: int, high: int) -> None:
    def labels(text: str) -> set[str]:
        return {
            "::" if "::" in text else "no ::",
            "ascii" if text.isascii() else "non-ascii",
            "max" if utf8(text) == high else "shorter",
        }

    want = {"max", "shorter", "::", "non-ascii"} if high >= 100 else {"max"}
    texts = draw_until(free_text(min_bytes=low, max_bytes=high), want, labels)
    for text in texts:
        assert low <= utf8(text) <= high
        assert all(
            unicodedata.category(c) not in ("Cs", "Zl", "Zp")
            and (unicodedata.category(c) != "Cc" or c == "\t")
            for c in text
        )


@pytest.mark.parametrize("max_separators", [0, 3])
def test_free_text_with_few_separators(max_separators: int) -> None:
    texts = draw_until(
        free_text(max_bytes=300, max_separators=max_separators),
        {"max", "--"},
        lambda t: {"max" if utf8(t) == 300 else "", "--" if "--" in t else ""},
    )
    assert all(text.count("::") <= max_separators for text in texts)


def test_free_text_may_be_empty_when_asked() -> None:
    assert set(draw_until(free_text(min_bytes=0, max_bytes=0), {""}, lambda t: {t})) == {""}


@pytest.mark.parametrize(
    "make",
    [
        lambda: free_text(min_bytes=5, max_bytes=4),
        lambda: paths(min_bytes=41, limits=SMALL),
        lambda: paths(min_bytes=20, max_bytes=10),
        lambda: file_names(min_bytes=256),
    ],
)
def test_an_empty_size_range_is_refused(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        make()


def test_job_ids_match_the_pattern_including_the_edge_cases() -> None:
    ids = draw_until(
        job_ids(), {".a", "a..", "A" * 64, "other"}, lambda j: {j, "other"}, at_least=50
    )
    assert all(JOB_ID_PATTERN.fullmatch(job_id) for job_id in ids)
    for job_id in draw_until(worker_job_ids(), at_least=20):
        assert re.fullmatch(r"job-[0-9a-f]{12}", job_id)


@ALL_LIMITS
def test_paths_are_accepted_by_the_codec_within_the_limits(limits: Limits) -> None:
    top = limits.max_path_bytes

    def labels(path: str) -> set[str]:
        return {
            "max" if utf8(path) == top else "shorter",
            "/" if "/" in path else "one component",
            "non-ascii" if not path.isascii() else "ascii",
            "::" if "::" in path else "",
        }

    # (In 40 bytes a path seldom holds "::": "a::b" first reads as a drive, "a:".)
    want = {"max", "shorter", "/", "non-ascii"} | ({"::"} if top >= 200 else set())
    for path in draw_until(paths(limits=limits), want, labels, at_least=30):
        assert 1 <= utf8(path) <= top
        assert path.count("::") <= limits.max_fields - 5  # room for JOB_COMPLETE's fields
        assert _plain_path(path), path
        for cls in (SharedInputPath, SharedOutputPath):
            assert decode(encode(cls(path)), limits) == cls(path)


@pytest.mark.parametrize("size", [1, 7, 255, LIMITS.max_path_bytes])
def test_paths_of_an_exact_size(size: int) -> None:
    for path in draw_until(paths(min_bytes=size, max_bytes=size), at_least=10):
        assert utf8(path) == size
        assert decode(encode(SharedInputPath(path))) == SharedInputPath(path)


@pytest.mark.parametrize(
    ("path", "plain"),
    [
        ("inputs/train.zip", True),
        ("x/a::b/中文 x/.hidden", True),
        ("a::b", False),  # "a:" reads as a drive
        ("", False),
        ("/etc/passwd", False),
        ("C:x", False),
        ("a/../b", False),
        ("a/./b", False),
        ("a/\uff0e\uff0e/b", False),  # fullwidth dots: ".." once NFKC-folded
        ("a/x\uff0fy", False),  # fullwidth solidus: "/" once folded
        ("a/x\\y", False),
    ],
)
def test_what_a_plain_path_is(path: str, plain: bool) -> None:
    assert _plain_path(path) is plain


def test_sha256_hex_is_lowercase_unless_upper_case_is_allowed() -> None:
    def case(digest: str) -> str:
        if digest == digest.lower():
            return "lower"
        return "upper" if digest == digest.upper() else "mixed"

    lower = draw_until(sha256_hex(), at_least=30)
    assert all(_HEX64.fullmatch(h) and h == h.lower() for h in lower)
    mixed = draw_until(
        sha256_hex(allow_upper=True), {"lower", "upper", "mixed"}, lambda h: {case(h)}
    )
    assert all(FileExists(h).sha256 == h.lower() for h in mixed)


@pytest.mark.parametrize(("low", "high", "top"), [(1, 255, 255), (1, 2, 2), (200, 1000, 255)])
def test_file_names_pass_check_name_within_their_bounds(low: int, high: int, top: int) -> None:
    def labels(name: str) -> set[str]:
        return {
            "max" if utf8(name) == top else "",
            ":" if ":" in name else "",
            "non-ascii" if not name.isascii() else "",
        }

    want = {"max", ":", "non-ascii"} if top > 2 else {"max"}
    for name in draw_until(file_names(min_bytes=low, max_bytes=high), want, labels, at_least=30):
        check_name(name)
        assert low <= utf8(name) <= top


def test_a_name_check_name_refuses_is_never_drawn() -> None:
    with pytest.raises(InvalidNameError):
        check_name("a/b")
    assert not text_module._acceptable("a/b") and text_module._acceptable("a b")


def test_counts_reach_both_ends() -> None:
    found = draw_until(counts(1000), {0, 1000}, lambda n: {n}, at_least=30)
    assert all(0 <= n <= 1000 for n in found)


# ===================================================================== messages and frames

_TAKES_LIMITS = [
    cls
    for cls, make in MESSAGE_STRATEGIES.items()
    if "limits" in inspect.signature(make).parameters
]


def test_there_is_one_strategy_per_message_class() -> None:
    assert set(MESSAGE_STRATEGIES) == set(MESSAGE_TYPES)


@pytest.mark.parametrize("cls", list(MESSAGE_STRATEGIES), ids=lambda cls: cls.__name__)
def test_each_message_strategy_produces_its_class_within_the_limits(cls: type[Message]) -> None:
    make = MESSAGE_STRATEGIES[cls]
    cases = [(LIMITS, make())]
    if cls in _TAKES_LIMITS:
        cases += [(limits, make(limits=limits)) for limits in (SMALL, FEW)]
    for limits, strategy in cases:
        for message in draw_until(strategy, at_least=10):
            assert type(message) is cls
            frame = encode(message)
            assert decode(frame, limits) == message
            assert encode(decode(frame, limits)) == frame


@ALL_LIMITS
@pytest.mark.parametrize("cls", [JobLog, PathError], ids=lambda cls: cls.__name__)
def test_free_fields_sometimes_fill_the_frame_exactly(cls: type[Message], limits: Limits) -> None:
    top = limits.max_text_frame_bytes
    draw_until(
        MESSAGE_STRATEGIES[cls](limits=limits).map(encode),
        {"full"},
        lambda frame: {"full" * (isinstance(frame, str) and utf8(frame) == top)},
    )


@pytest.mark.parametrize("limits", [LIMITS, SMALL], ids=["default", "small"])
def test_chunks_sometimes_have_the_maximum_size(limits: Limits) -> None:
    top = limits.max_binary_frame_bytes
    draw_until(MESSAGE_STRATEGIES[Chunk](limits=limits), {0, top}, lambda c: {len(c.data)})


def test_fields_reach_their_extremes() -> None:
    draw_until(MESSAGE_STRATEGIES[FileReady](), {0, 10**18 - 1}, lambda m: {m.offset})
    draw_until(
        MESSAGE_STRATEGIES[JobComplete](),
        {"job folder", "most files"},
        lambda m: {
            "job folder" * m.output_path.startswith("jobs/job-"),
            "most files" * (m.file_count == 10**15 - 1),
        },
    )
    for metrics in draw_until(MESSAGE_STRATEGIES[JobMetrics](), at_least=30):
        assert all(0 <= getattr(metrics, name) < 1e14 for name in JobMetrics.FIELDS)
    draw_until(MESSAGE_STRATEGIES[PathError](), {True, False}, lambda m: {m.kind is None})
    draw_until(
        MESSAGE_STRATEGIES[ResultsStored](),
        {True, False},
        lambda m: {m.download_path == f"/download/{m.job_id}"},
    )
    draw_until(codes(["KNOWN"]), {"KNOWN", "other"}, lambda c: {c if c == "KNOWN" else "other"})
    assert frame_budget(SMALL, 1000) == 1 and frame_budget(SMALL, 100) == 200


_CLIENT_ONLY = {JobId, SharedInputPath, SharedOutputPath, JobStart, JobCancel, ResultsRequest}
_CLIENT_ONLY |= {ResultsViaStorage, AuthHello, AuthResponse}
_WORKER_ONLY = {PathValidated, PathError, JobLog, JobMetrics, JobComplete}
_WORKER_ONLY |= {JobFailed, ProtocolErrorFrame, ResultsStored, AuthChallenge, AuthOk}
_BOTH = set(MESSAGE_STRATEGIES) - _CLIENT_ONLY - _WORKER_ONLY


def test_the_transfer_messages_go_both_ways() -> None:
    assert {
        FileMeta,
        FileMetaLegacy,
        FileProofRequest,
        FileProof,
        FileReady,
        FileExists,
        EndOfFile,
        FileProgress,
        FileReceived,
        TransferError,
        FileCancel,
        Chunk,
        RelayPart,
        RelayStop,
        RelayEnded,
    } == _BOTH


@pytest.mark.parametrize(
    ("make", "limits", "expected"),
    [
        (messages, LIMITS, set(MESSAGE_STRATEGIES)),
        (client_messages, SMALL, _CLIENT_ONLY | _BOTH),
        # RELAY_PART has 9 fields: none fits FEW's 6.
        (worker_messages, FEW, (_WORKER_ONLY | _BOTH) - {RelayPart}),
    ],
    ids=["messages", "client-small", "worker-few-fields"],
)
def test_message_mixes_produce_every_class_of_their_side(
    make: Callable[..., st.SearchStrategy[Message]], limits: Limits, expected: set[type]
) -> None:
    found = draw_until(make(limits=limits), expected, lambda m: {type(m)})
    assert {type(m) for m in found} == expected
    for message in found:
        assert decode(encode(message), limits) == message


def test_messages_fit_limits_tighter_than_some_strategies() -> None:
    tiny = Limits(
        max_text_frame_bytes=90, max_binary_frame_bytes=16, max_path_bytes=20, max_fields=4
    )
    fitting = (_CLIENT_ONLY - {AuthHello, AuthResponse}) | {
        PathValidated,
        JobLog,
        FileReady,
        FileExists,
        FileReceived,
        Chunk,
    }
    found = draw_until(messages(limits=tiny), fitting, lambda m: {type(m)})
    for message in found:
        assert decode(encode(message), tiny) == message
    assert not {type(m) for m in found} & {JobComplete, FileMeta}  # five fields: too many


def test_frames_are_encoded_valid_messages() -> None:
    found = draw_until(frames(limits=SMALL), {str, bytes}, lambda f: {type(f)}, at_least=30)
    for frame in found:
        assert encode(decode(frame, SMALL)) == frame


# ===================================================================== malformed frames


def malformed_labels(pair: tuple[str | bytes, ErrorCode]) -> set[Any]:
    """The code, the kind of frame, and the frame type of a malformed frame."""
    frame, code = pair
    if isinstance(frame, bytes):
        return {code, bytes}
    return {code, str, (frame.partition("::")[0], code)}


def test_malformed_frames_are_refused_with_their_codes() -> None:
    codes_ = {
        ErrorCode.UNKNOWN_MESSAGE,
        ErrorCode.MALFORMED_FRAME,
        ErrorCode.INVALID_JOB_ID,
        ErrorCode.FRAME_TOO_LARGE,
        ErrorCode.PATH_TOO_LONG,
        ErrorCode.TOO_MANY_FIELDS,
    }
    # Every frame type has malformed frames: missing, extra or broken fields.
    broken = {(frame_type, ErrorCode.MALFORMED_FRAME) for frame_type in FRAME_TYPES}
    want = codes_ | broken | {bytes}
    found = draw_until(malformed_frames_with_codes(), want, malformed_labels, cap=5000)
    for frame, code in found:
        assert refused_with(frame) is code, frame[:80]
        # The frames that break a limit break it by a little.
        if code is ErrorCode.FRAME_TOO_LARGE and isinstance(frame, str):
            assert TOP < utf8(frame) <= TOP + 8
        elif code is ErrorCode.FRAME_TOO_LARGE:
            top = LIMITS.max_binary_frame_bytes
            assert top < len(frame) <= top + 64
        elif code is ErrorCode.TOO_MANY_FIELDS and isinstance(frame, str):
            assert LIMITS.max_fields < frame.count("::") + 1 <= LIMITS.max_fields + 8


@pytest.mark.parametrize("limits", [SMALL, FEW], ids=["small", "few-fields"])
def test_malformed_frames_against_other_limits(limits: Limits) -> None:
    # Against few fields, a frame of any kind may have too many; against 300 bytes, the
    # frames with 1024 fields are too large (the size is checked first).
    limit_code = ErrorCode.TOO_MANY_FIELDS if limits is FEW else ErrorCode.FRAME_TOO_LARGE
    want = {limit_code, ErrorCode.MALFORMED_FRAME, ErrorCode.PATH_TOO_LONG}
    for frame, code in draw_until(
        malformed_frames_with_codes(limits=limits), want, malformed_labels
    ):
        assert refused_with(frame, limits) is code, frame[:80]


def test_malformed_frames_without_codes_are_refused() -> None:
    for frame in draw_until(malformed_frames(limits=SMALL), at_least=50):
        refused_with(frame, SMALL)
