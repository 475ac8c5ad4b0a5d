"""Tests of the public strategies themselves (``protocol.strategies``): each one generates
what its documentation promises (values within their bounds and limits, frames that round
trip, refused frames with the code the parser raises, exchanges the state machines accept,
signaling frames in both directions), and every variant it offers does come up.

Each test draws until every variant it expects has come up (``draw_until``), and checks
every example drawn on the way.
"""

from __future__ import annotations

import inspect
import json
import re
import unicodedata
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

import pytest
from hypothesis import Phase, find, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample
from protocol.strategies import (
    C2W,
    EXCHANGE_KINDS,
    MESSAGE_STRATEGIES,
    W2C,
    Exchange,
    _plain_path,
    client_messages,
    exchanges,
    file_names,
    frames,
    free_text,
    job_ids,
    json_values,
    malformed_frames,
    malformed_frames_with_codes,
    malformed_signaling_frames,
    malformed_signaling_frames_with_codes,
    messages,
    paths,
    peer_ids,
    sha256_hex,
    signaling_frames,
    worker_messages,
)

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
    TransferErrorCode,
    decode,
    encode,
)
from protocol.messages import JOB_ID_PATTERN
from protocol.signaling import (
    MAX_METADATA_BYTES,
    PEER_ID_PATTERN,
    Answer,
    Candidate,
    ErrorFrame,
    ListPeers,
    Offer,
    Peers,
    Register,
    Registered,
    RelayedAnswer,
    RelayedCandidate,
    RelayedOffer,
    SignalingError,
    SignalingErrorCode,
    dump_frame,
    parse_client_frame,
    parse_server_frame,
)
from protocol.transfer import check_name
from tests.test_properties import EXCHANGE_SHAPES, ExchangePlayer

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


class Drawn(Generic[T]):
    """One example, with a short repr (hypothesis shows the example that ends a search)."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "Drawn(...)"


def draw_until(
    strategy: st.SearchStrategy[T],
    want: Iterable[Hashable] = (),
    labels: Callable[[T], Iterable[Hashable]] = lambda _: (),
    *,
    at_least: int = 1,
    cap: int = 3000,
) -> list[T]:
    """Examples of ``strategy``, drawn until the labels of those drawn include every one
    of ``want`` and there are ``at_least`` of them (or all there are); fails when ``cap``
    examples do not show all of ``want``."""
    wanted, seen, found = set(want), set[Hashable](), list[T]()

    def enough(drawn: Drawn[T]) -> bool:
        found.append(drawn.value)
        seen.update(labels(drawn.value))
        return len(found) >= at_least and wanted <= seen

    quick = settings(max_examples=cap, phases=[Phase.generate], database=None, deadline=None)
    try:
        find(strategy.map(Drawn), enough, settings=quick)
    except NoSuchExample:  # cap reached, or no other example exists
        if not wanted <= seen:
            pytest.fail(f"{len(found)} examples without {wanted - seen}")
    return found


def refused_with(frame: str | bytes, limits: Limits = LIMITS) -> ErrorCode:
    with pytest.raises(RemoteProtocolError) as info:
        decode(frame, limits)
    return ErrorCode(info.value.code)


# =========================================================================== field values


def is_single_line(text: str) -> bool:
    """No surrogates, no line or paragraph separators, no control character but tab."""
    return all(
        unicodedata.category(c) not in ("Cs", "Zl", "Zp")
        and (unicodedata.category(c) != "Cc" or c == "\t")
        for c in text
    )


def text_labels(text: str, top: int) -> set[str]:
    labels = {"::" if "::" in text else "no ::", "ascii" if text.isascii() else "non-ascii"}
    labels.add("max" if utf8(text) == top else "shorter")
    return labels


@pytest.mark.parametrize(("low", "high"), [(1, 512), (1, 6), (30, 30), (100, 4000)])
def test_free_text_is_single_line_and_within_its_bounds(low: int, high: int) -> None:
    want = {"max", "shorter", "::", "non-ascii"} if high >= 100 else {"max"}
    texts = draw_until(
        free_text(min_bytes=low, max_bytes=high), want, lambda t: text_labels(t, high)
    )
    assert all(low <= utf8(text) <= high and is_single_line(text) for text in texts)


@pytest.mark.parametrize("max_separators", [0, 3])
def test_free_text_with_few_separators(max_separators: int) -> None:
    texts = draw_until(
        free_text(max_bytes=300, max_separators=max_separators),
        {"max", "--", ":"},
        lambda t: {"max" if utf8(t) == 300 else "", "--" if "--" in t else "", ":" * (":" in t)},
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
    ids = draw_until(job_ids(), {".", "..", "A" * 64, "other"}, lambda j: {j, "other"}, at_least=50)
    assert all(JOB_ID_PATTERN.fullmatch(job_id) for job_id in ids)
    assert all(decode(encode(JobId(job_id))) == JobId(job_id) for job_id in ids)


@ALL_LIMITS
def test_paths_are_accepted_by_the_codec_within_the_limits(limits: Limits) -> None:
    top = limits.max_path_bytes

    def labels(path: str) -> set[str]:
        return text_labels(path, top) | {"/" if "/" in path else "one component"}

    # (In 40 bytes a path seldom holds "::": "a::b" first reads as a drive, "a:".)
    want = {"max", "shorter", "/", "non-ascii"} | ({"::"} if top >= 200 else set())
    found = draw_until(paths(limits=limits), want, labels, at_least=30)
    for path in found:
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


def letter_case(digest: str) -> str:
    if digest == digest.lower():
        return "lower"
    return "upper" if digest == digest.upper() else "mixed"


def test_sha256_hex_is_lowercase_unless_upper_case_is_allowed() -> None:
    lower = draw_until(sha256_hex(), at_least=30)
    assert all(_HEX64.fullmatch(h) and h == h.lower() for h in lower)
    mixed = draw_until(
        sha256_hex(allow_upper=True), {"lower", "upper", "mixed"}, lambda h: {letter_case(h)}
    )
    assert all(_HEX64.fullmatch(h) for h in mixed)
    assert all(FileExists(h).sha256 == h.lower() for h in mixed)


@pytest.mark.parametrize(("low", "high", "top"), [(1, 255, 255), (1, 2, 2), (200, 1000, 255)])
def test_file_names_pass_check_name_within_their_bounds(low: int, high: int, top: int) -> None:
    want = {"max", ":", "non-ascii"} if top > 2 else {"max"}
    names = draw_until(
        file_names(min_bytes=low, max_bytes=high),
        want,
        lambda n: text_labels(n, top) | {":" * (":" in n)},
        at_least=30,
    )
    assert all(check_name(name) is None and low <= utf8(name) <= top for name in names)


# =========================================================================== messages

_TAKES_LIMITS = [
    cls
    for cls, make in MESSAGE_STRATEGIES.items()
    if "limits" in inspect.signature(make).parameters
]


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


def test_counts_reach_their_extremes() -> None:
    draw_until(MESSAGE_STRATEGIES[FileReady](), {0, 10**18 - 1}, lambda m: {m.offset})
    draw_until(
        MESSAGE_STRATEGIES[JobComplete](),
        {"job folder", "most files"},
        lambda m: {
            "job folder" * m.output_path.startswith(".rtc-jobs/job-"),
            "most files" * (m.file_count == 10**15 - 1),
        },
    )
    for metrics in draw_until(MESSAGE_STRATEGIES[JobMetrics](), at_least=30):
        assert all(0 <= getattr(metrics, name) < 1e14 for name in JobMetrics.FIELDS)


_CLIENT_ONLY = {JobId, SharedInputPath, SharedOutputPath, JobStart, JobCancel, ResultsRequest}
_CLIENT_ONLY |= {ResultsViaStorage}
_WORKER_ONLY = {PathValidated, PathError, JobLog, JobMetrics, JobComplete, JobFailed}
_WORKER_ONLY |= {ProtocolErrorFrame, ResultsStored}
_BOTH = set(MESSAGE_STRATEGIES) - _CLIENT_ONLY - _WORKER_ONLY


def test_the_transfer_messages_go_both_ways() -> None:
    assert {
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
    } == _BOTH


@pytest.mark.parametrize(
    ("make", "limits", "expected"),
    [
        (messages, LIMITS, set(MESSAGE_STRATEGIES)),
        (client_messages, SMALL, _CLIENT_ONLY | _BOTH),
        (worker_messages, FEW, _WORKER_ONLY | _BOTH),
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
    fitting = _CLIENT_ONLY | {PathValidated, JobLog, FileReady, FileExists, FileReceived, Chunk}
    found = draw_until(messages(limits=tiny), fitting, lambda m: {type(m)})
    for message in found:
        assert decode(encode(message), tiny) == message
    assert not {type(m) for m in found} & {JobComplete, FileMeta}  # five fields: too many


def test_frames_are_encoded_valid_messages() -> None:
    found = draw_until(frames(limits=SMALL), {str, bytes}, lambda f: {type(f)}, at_least=30)
    for frame in found:
        assert encode(decode(frame, SMALL)) == frame


# =========================================================================== refusals


def malformed_labels(pair: tuple[str | bytes, ErrorCode]) -> set[Any]:
    """The code, the kind of frame, and the frame type of a malformed frame."""
    frame, code = pair
    if isinstance(frame, bytes):
        return {code, bytes}
    return {code, str, (frame.partition("::")[0], code)}


def test_malformed_frames_are_refused_with_their_codes() -> None:
    codes = {
        ErrorCode.UNKNOWN_MESSAGE,
        ErrorCode.MALFORMED_FRAME,
        ErrorCode.INVALID_JOB_ID,
        ErrorCode.FRAME_TOO_LARGE,
        ErrorCode.PATH_TOO_LONG,
        ErrorCode.TOO_MANY_FIELDS,
    }
    # Every frame type has malformed frames: missing, extra or broken fields.
    broken = {(frame_type, ErrorCode.MALFORMED_FRAME) for frame_type in FRAME_TYPES}
    want = codes | broken | {bytes}
    found = draw_until(malformed_frames_with_codes(), want, malformed_labels)
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


# =========================================================================== exchanges


def is_outside(path: str) -> bool:
    """A path the storage layer refuses before looking at the disk."""
    return path.startswith("/") or ".." in path.split("/") or "\\" in path or "\x00" in path


def features(exchange: Exchange) -> set[str]:
    """What an exchange shows, by the frames it holds (one part per exchange)."""
    ms = [(direction, decode(frame)) for direction, frame in exchange]
    types = [type(m) for _, m in ms]
    seen: set[str] = set()
    if JobStart in types:
        seen.add("named job" if JobId in types else "worker's job id")
    if FileCancel in types and FileReceived in types:
        seen.add("cut and resumed")
    elif FileReady in types and FileReceived in types:
        seen.add("whole" if FileReady(0) in (m for _, m in ms) else "continued")
    for i, (direction, m) in enumerate(ms):
        before = types[:i]
        match m:
            case SharedOutputPath() if SharedInputPath not in before:
                seen.add("output path first")
            case JobStart(legacy=legacy):
                seen.add("legacy start" if legacy else "start")
            case JobLog():
                seen.add("log")
            case JobComplete():
                seen.add("complete")
            case JobFailed(reason="cancelled"):
                seen.add("job cancelled")
            case JobFailed():
                seen.add("job failed")
            case FileProgress():
                seen.add("progress")
            case FileCancel():
                seen.add("file cancel")
            case FileExists():
                seen.add("dedupe")
            case FileReceived():
                seen.add(f"received {direction}")
            case EndOfFile() if FileMetaLegacy in before:
                seen.add("legacy end of file")
            case TransferError(code=code) if code != TransferErrorCode.CANCELLED:
                seen.add(f"refused {code}")
            case ProtocolErrorFrame():
                if before.count(JobStart) == 2:
                    seen.add("second start refused")
                else:
                    seen.add(f"{types[i - 1].__name__} refused")
                    seen.add("refused after input" if PathValidated in before else "refused alone")
            case PathError():
                request = ms[i - 1][1]
                if isinstance(request, SharedInputPath):
                    seen.add("outside input" if is_outside(request.path) else "missing input")
                    if JobStart in types[i:]:
                        seen.add("input retried")
                else:
                    seen.add("output refused")
    return seen


#: Every variant each kind of exchange offers, as :func:`features` shows it.
VARIANTS: dict[str, set[str]] = {
    "shared_job": {
        "named job",
        "worker's job id",
        "output path first",
        "start",
        "legacy start",
        "log",
        "complete",
        "job failed",
    },
    "transfer": {"received W->C", "progress", "whole"},
    "resume": {"continued", "cut and resumed", "progress"},
    "dedupe": {"dedupe"},
    "results": {"dedupe", "received W->C", "received C->W", "complete", "log"},
    "cancel": {"job cancelled", "file cancel"},
    "error": {
        "outside input",
        "missing input",
        "input retried",
        "output refused",
        "JobStart refused",
        "JobCancel refused",
        "refused after input",
        "refused alone",
        "second start refused",
        "refused UNEXPECTED_DATA",
        "refused INVALID_NAME",
        "refused FILE_TOO_LARGE",
        "refused HASH_MISMATCH",
        "refused SIZE_MISMATCH",
    },
    "legacy": {"received W->C", "legacy end of file"},
}


def test_every_kind_has_its_variants() -> None:
    assert set(VARIANTS) == set(EXCHANGE_KINDS) == set(EXCHANGE_SHAPES)


@pytest.mark.parametrize("kind", EXCHANGE_KINDS)
def test_each_kind_of_exchange_produces_all_its_variants(kind: str) -> None:
    found = draw_until(exchanges(kinds=(kind,), max_parts=1), VARIANTS[kind], features)
    for exchange in found:
        assert all(direction in (C2W, W2C) for direction, _ in exchange)
        assert EXCHANGE_SHAPES[kind]([(d, decode(f)) for d, f in exchange])
        ExchangePlayer().play(exchange)


def forgets_the_file(exchange: Exchange) -> bool:
    """A held file, then a refused input path (which forgets it), then a refused JOB_START."""
    ms = [decode(frame) for _, frame in exchange]
    types = [type(m) for m in ms]
    held = types[:4] == [FileMeta, FileExists, SharedInputPath, PathError]
    return held and JobStart in types and isinstance(ms[-1], ProtocolErrorFrame)


def test_a_received_file_is_forgotten_before_an_early_job_start() -> None:
    # JOB_START after a received file would run a job: the exchange first has the
    # worker refuse an input path, so that JOB_START is refused.
    found = draw_until(
        exchanges(kinds=("dedupe", "error"), max_parts=2),
        {True},
        lambda e: {forgets_the_file(e)},
    )
    for exchange in found:
        ExchangePlayer().play(exchange)


def test_exchanges_chain_parts_and_respect_a_smaller_maximum_file_size() -> None:
    found = draw_until(
        exchanges(max_parts=4, max_file_size=1000),
        {"long"},
        lambda e: {"long" * (len(e) > 20)},
        at_least=20,
    )
    for exchange in found:
        ExchangePlayer(max_file_size=1000).play(exchange)


@pytest.mark.parametrize("kinds", [(), ("nope",), ("transfer", "Transfer")])
def test_exchanges_refuse_unknown_kinds(kinds: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="kinds"):
        exchanges(kinds=kinds)


# =========================================================================== signaling


def test_peer_ids_match_the_pattern() -> None:
    assert all(re.fullmatch(PEER_ID_PATTERN, p) for p in draw_until(peer_ids(), at_least=50))


def test_json_values_survive_a_round_trip() -> None:
    types = {type(None), bool, int, float, str, list, dict}
    for value in draw_until(json_values(), types, lambda v: {type(v)}, at_least=50):
        text = json.dumps(value, ensure_ascii=False)
        assert json.loads(text) == value
        text.encode("utf-8")  # no lone surrogates


CLIENT_FRAMES = {Register, ListPeers, Offer, Answer, Candidate}
SERVER_FRAMES = {Registered, Peers, RelayedOffer, RelayedAnswer, RelayedCandidate, ErrorFrame}


def parse_back(frame: Any) -> Any:
    text = dump_frame(frame)
    if type(frame) in CLIENT_FRAMES:
        return parse_client_frame(text)
    return parse_server_frame(text)


def test_signaling_frames_round_trip_in_their_direction() -> None:
    found = draw_until(signaling_frames(), CLIENT_FRAMES | SERVER_FRAMES, lambda f: {type(f)})
    for frame in found:
        assert parse_back(frame) == frame


_REQUIRED = {
    "register": ("peer_id", "role"),
    "offer": ("to", "sdp"),
    "answer": ("to", "sdp"),
    "candidate": ("to", "candidate"),
}


def compact_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def invalid_frame_kind(text: str) -> str:
    """Why a JSON frame refused with INVALID_FRAME is invalid."""
    obj = json.loads(text)
    if not isinstance(obj, dict):
        return "not an object"
    frame_type = obj.get("type")
    if not isinstance(frame_type, str):
        return "no string type"
    if any(name not in obj for name in _REQUIRED[frame_type]):
        return "missing field"
    metadata = obj.get("metadata", {})
    if not isinstance(metadata, dict) or len(compact_json(metadata)) > MAX_METADATA_BYTES:
        return "bad metadata"
    strings = [obj.get(name, "") for name in ("peer_id", "role", "token", "to", "sdp")]
    if not all(isinstance(value, str) for value in strings if value is not None):
        return "wrongly typed field"
    if obj.get("role", "client") not in ("worker", "client"):
        return "bad role"
    peer_id = obj.get("peer_id", obj.get("to"))
    assert not re.fullmatch(PEER_ID_PATTERN, peer_id), text
    return "bad peer id"


def signaling_labels(pair: tuple[str, str]) -> set[str]:
    text, code = pair
    if code == SignalingErrorCode.INVALID_FRAME:
        return {code, invalid_frame_kind(text)}
    return {code}


@pytest.mark.parametrize("max_bytes", [262144, 1000])
def test_malformed_signaling_frames_are_refused_with_their_codes(max_bytes: int) -> None:
    want = {
        SignalingErrorCode.INVALID_JSON,
        SignalingErrorCode.INVALID_FRAME,
        SignalingErrorCode.UNKNOWN_TYPE,
        SignalingErrorCode.FRAME_TOO_LARGE,
    }
    if max_bytes > 100_000:
        want |= {
            "not an object",
            "no string type",
            "missing field",
            "wrongly typed field",
            "bad peer id",
            "bad role",
            "bad metadata",
        }
    strategy = malformed_signaling_frames_with_codes(max_bytes=max_bytes)
    for text, code in draw_until(strategy, want, signaling_labels):
        with pytest.raises(SignalingError) as info:
            parse_client_frame(text, max_bytes)
        assert info.value.code == code, text[:80]


def test_malformed_signaling_frames_without_codes_are_refused() -> None:
    for text in draw_until(malformed_signaling_frames(max_bytes=4096), at_least=50):
        with pytest.raises(SignalingError):
            parse_client_frame(text, 4096)
