"""Property tests of the protocol through its public strategies (``protocol.strategies``):
codec round trips at every length up to the limits, refusals with their codes, adversarial
64 KiB frames, whole exchanges played through the state machines in lockstep, every
(state, event) pair of the three tables reached through random valid prefixes, and the
signaling frames."""

from __future__ import annotations

import gc
import hashlib
import re
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol.strategies import (
    C2W,
    EXCHANGE_KINDS,
    MESSAGE_STRATEGIES,
    PATH_ERROR_PREFIXES,
    W2C,
    client_messages,
    client_signaling_frames,
    exchanges,
    file_names,
    frames,
    free_text,
    job_ids,
    malformed_frames,
    malformed_frames_with_codes,
    malformed_signaling_frames_with_codes,
    messages,
    paths,
    server_signaling_frames,
    sha256_hex,
    worker_messages,
)

import protocol.messages as messages_module
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
    LocalProtocolError,
    Message,
    PathError,
    PathValidated,
    ProtocolError,
    ProtocolErrorFrame,
    RemoteProtocolError,
    ResultsRequest,
    SharedInputPath,
    SharedOutputPath,
    TransferError,
    TransferErrorCode,
    decode,
    encode,
)
from protocol.errors import PathReason as PathErrorKind
from protocol.job import (
    CLIENT_EVENTS,
    INTERNAL_EVENTS,
    TRANSITIONS,
    CancelJob,
    FileAccepted,
    InputAccepted,
    InputRejected,
    JobFinished,
    JobSession,
    JobState,
    OutputAccepted,
    OutputRejected,
    PrepareOutput,
    SetJobId,
    StartJob,
    ValidateInput,
)
from protocol.signaling import (
    SignalingError,
    dump_frame,
    parse_client_frame,
    parse_server_frame,
)
from protocol.transfer import (
    RECEIVER_TRANSITIONS,
    SENDER_TRANSITIONS,
    Append,
    CheckStore,
    Discard,
    Finish,
    Note,
    ReceiverState,
    Send,
    SenderState,
    Stored,
    StoreFailed,
    StoreHas,
    StoreOffset,
    TransferReceiver,
    TransferSender,
    check_name,
)

LIMITS = DEFAULT_LIMITS
TOP = LIMITS.max_text_frame_bytes
SMALL = Limits(max_text_frame_bytes=300, max_binary_frame_bytes=64, max_path_bytes=40)
QUICK = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def utf8(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def refused(frame: str | bytes, limits: Limits = LIMITS) -> RemoteProtocolError:
    """decode must raise exactly RemoteProtocolError; returns it."""
    with pytest.raises(RemoteProtocolError) as info:
        decode(frame, limits)
    assert type(info.value) is RemoteProtocolError
    assert isinstance(info.value.code, ErrorCode)
    return info.value


# =========================================================================== codec


MESSAGE_CLASSES = sorted(
    (
        obj
        for name in messages_module.__all__
        if isinstance(obj := getattr(messages_module, name), type)
        and issubclass(obj, Message)
        and obj is not Message
    ),
    key=lambda cls: cls.__name__,
)


def test_the_strategies_cover_every_message_class() -> None:
    assert set(MESSAGE_STRATEGIES) == set(MESSAGE_CLASSES)


@settings(QUICK, max_examples=500)
@given(messages())
def test_decode_inverts_encode(message: Message) -> None:
    frame = encode(message)
    assert decode(frame) == message
    assert encode(decode(frame)) == frame
    if isinstance(frame, str):
        assert utf8(frame) <= TOP
    else:
        assert len(frame) <= LIMITS.max_binary_frame_bytes


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda cls: cls.__name__)
@settings(QUICK, max_examples=15)
@given(data=st.data())
def test_every_message_class_round_trips(cls: type[Message], data: st.DataObject) -> None:
    message = data.draw(MESSAGE_STRATEGIES[cls]())
    assert type(message) is cls
    assert type(decode(encode(message))) is cls
    assert decode(encode(message)) == message


@settings(QUICK, max_examples=150)
@given(st.one_of(client_messages(), worker_messages()))
def test_client_and_worker_messages_round_trip(message: Message) -> None:
    assert decode(encode(message)) == message


@settings(QUICK, max_examples=200)
@given(frames(limits=SMALL))
def test_frames_respect_custom_limits(frame: str | bytes) -> None:
    message = decode(frame, SMALL)
    assert encode(message) == frame
    if isinstance(message, SharedInputPath | SharedOutputPath):
        assert utf8(message.path) <= SMALL.max_path_bytes


# ------------------------------------------------------------- at the maximum lengths


def exact_text(prefix: str) -> st.SearchStrategy[str]:
    """Free text that makes ``prefix + text`` exactly TOP bytes (and at most max_fields
    fields: the prefix holds at most three)."""
    n = TOP - utf8(prefix)
    return free_text(min_bytes=n, max_bytes=n, max_separators=LIMITS.max_fields - 3)


#: name -> (frame prefix, message built from the free field); frame == prefix + field.
FILLING: dict[str, tuple[str, Callable[[str], Message]]] = {
    "JOB_LOG": ("JOB_LOG::", JobLog),
    "PATH_ERROR": ("PATH_ERROR::", PathError),
    "JOB_FAILED": (f"JOB_FAILED::{'j' * 64}::", lambda text: JobFailed("j" * 64, text)),
    "PROTOCOL_ERROR": (
        "PROTOCOL_ERROR::WORKER_BUSY::",
        lambda text: ProtocolErrorFrame("WORKER_BUSY", text),
    ),
    "TRANSFER_ERROR": (
        "TRANSFER_ERROR::HASH_MISMATCH::",
        lambda text: TransferError("HASH_MISMATCH", text),
    ),
}


@pytest.mark.parametrize("name", sorted(FILLING))
@settings(QUICK, max_examples=10)
@given(data=st.data())
def test_a_free_field_can_fill_the_frame_exactly(name: str, data: st.DataObject) -> None:
    prefix, build = FILLING[name]
    text = data.draw(exact_text(prefix))
    message = build(text)
    frame = encode(message)
    assert frame == prefix + text
    assert utf8(frame) == TOP
    assert decode(frame) == message
    assert refused(frame + "x").code == ErrorCode.FRAME_TOO_LARGE


@pytest.mark.parametrize("cls", [SharedInputPath, SharedOutputPath])
@settings(QUICK, max_examples=10)
@given(data=st.data())
def test_paths_at_the_maximum_length(
    cls: type[SharedInputPath | SharedOutputPath], data: st.DataObject
) -> None:
    n = LIMITS.max_path_bytes
    path = data.draw(paths(min_bytes=n, max_bytes=n))
    assert utf8(path) == n
    assert decode(encode(cls(path))) == cls(path)
    assert refused(f"{cls.TYPE}::{path}x").code == ErrorCode.PATH_TOO_LONG
    # JOB_COMPLETE carries such a path too (parsed from the right)
    done = JobComplete("j", path, 3, 1.5)
    assert decode(encode(done)) == done


@settings(QUICK, max_examples=20)
@given(file_names(min_bytes=255), sha256_hex(), st.integers(0, 10**18 - 1))
def test_file_names_at_the_maximum_length(name: str, sha: str, size: int) -> None:
    assert utf8(name) == 255
    assert check_name(name) is None
    assert check_name(name + "x") is not None  # 256 bytes: the receiver refuses it
    meta = FileMeta(name, size, sha, 65536)
    assert decode(encode(meta)) == meta


def test_a_chunk_at_the_maximum_length() -> None:
    data = bytes(range(256)) * (LIMITS.max_binary_frame_bytes // 256)
    assert decode(data) == Chunk(data)
    assert refused(data + b"!").code == ErrorCode.FRAME_TOO_LARGE


# ------------------------------------------------------------------ refusals


@settings(QUICK, max_examples=500)
@given(malformed_frames_with_codes())
def test_malformed_frames_are_refused_with_their_code(pair: tuple[str | bytes, ErrorCode]) -> None:
    frame, code = pair
    assert refused(frame).code == code


@settings(QUICK, max_examples=200)
@given(malformed_frames_with_codes(limits=SMALL))
def test_malformed_frames_against_small_limits(pair: tuple[str | bytes, ErrorCode]) -> None:
    frame, code = pair
    assert refused(frame, SMALL).code == code


@settings(QUICK, max_examples=100)
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
        assert isinstance(result, Message)
        assert type(result) in MESSAGE_STRATEGIES


# ------------------------------------------------- adversarial frames at the length limit


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
    # The parser must finish on 64 KiB of colons, separators and nesting with a message
    # or a RemoteProtocolError. This is no timing test: a quadratic parser would still
    # pass the first half. The second half counts calls instead: decoding the full
    # 64 KiB frame must not make more calls than a 20 KB frame of the same pattern, so a
    # parser that loops in Python per character or per separator fails here. (Work done
    # inside C code, such as regex backtracking, is not counted.)
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


# =========================================================================== exchanges


GENERATED = "generated-by-the-worker"
_WORKER_JOB_ID = re.compile(r"job-[0-9a-f]{12}")
_RECEIVER_FRAMES = (FileReady, FileExists, FileProgress, FileReceived, TransferError)
_SENDER_FRAMES = (FileMeta, FileMetaLegacy, Chunk, EndOfFile, FileCancel)


def same(actual: Message, expected: Message) -> bool:
    """Equal messages; error frames compare by type and code (their details are prose)."""
    if isinstance(expected, TransferError | ProtocolErrorFrame):
        return type(actual) is type(expected) and actual.code == expected.code
    return actual == expected


@dataclass
class Lane:
    """One transfer direction: the sending side's and the receiving side's machines."""

    sender_direction: str
    sender: TransferSender = field(default_factory=TransferSender)
    receiver: TransferReceiver = field(
        default_factory=lambda: TransferReceiver(max_size=10 * 1024**3)
    )
    pending: str | None = None  # "check" or "finish": a store answer is awaited
    meta: FileMeta | FileMetaLegacy | None = None
    base: bytes | None = b""  # bytes held before this connection's chunks (None: unknown)
    data: bytearray = field(default_factory=bytearray)
    chunk_sizes: list[int] = field(default_factory=list)
    kept: dict[str, bytes] = field(default_factory=dict)  # partials kept for a resume

    @property
    def receiver_direction(self) -> str:
        return W2C if self.sender_direction == C2W else C2W


class ExchangePlayer:
    """Plays an exchange through the worker's JobSession and the transfer machines of both
    directions (client to worker uploads, worker to client results), in lockstep.

    The frames of the exchange stand for the I/O the machines ask for: the worker's
    PATH_VALIDATED/PATH_ERROR answer a path validation, FILE_READY/FILE_EXISTS answer a
    store look-up, FILE_RECEIVED/TRANSFER_ERROR answer a verification. Every frame a
    machine sends must be the next frame of the exchange (error frames by code).
    """

    def __init__(self, max_file_size: int = 10 * 1024**3) -> None:
        self.session = JobSession(job_id_factory=lambda: GENERATED)
        self.up = Lane(C2W, receiver=TransferReceiver(max_size=max_file_size))
        self.down = Lane(W2C, receiver=TransferReceiver(max_size=max_file_size))
        self.expected: deque[tuple[str, Message, bool]] = deque()  # (dir, message, to sender)
        self.pending_path: tuple[str, str] | None = None
        self.job: StartJob | None = None
        self.cancelled = False
        self.results: set[str] = set()  # jobs whose outputs stay in the job folder
        self.types: list[tuple[str, type]] = []

    # ------------------------------------------------------------------ driving

    def play(self, exchange: list[tuple[str, str | bytes]]) -> None:
        for direction, frame in exchange:
            assert direction in (C2W, W2C)
            message = decode(frame)
            assert encode(message) == frame
            self.types.append((direction, type(message)))
            self.step(direction, message)
        assert not self.expected, f"frames the machines sent are missing: {self.expected}"
        assert self.pending_path is None
        assert self.session.state is not JobState.RUNNING
        for lane in (self.up, self.down):
            assert lane.pending is None
            assert not lane.sender.active
            assert not lane.receiver.active

    def step(self, direction: str, message: Message) -> None:
        if isinstance(message, _SENDER_FRAMES):
            lane = self.up if direction == C2W else self.down
            self.from_sender(lane, message)
        elif isinstance(message, _RECEIVER_FRAMES):
            lane = self.up if direction == W2C else self.down
            self.from_receiver(lane, message)
        elif direction == C2W:
            self.from_client(message)
        else:
            self.from_worker(message)

    def take_expected(self, direction: str, message: Message) -> bool | None:
        """Match ``message`` with the head of the frames the machines sent; returns whether
        it goes on to the sender's machine (None: nothing was expected)."""
        if not self.expected:
            return None
        want_direction, want, to_sender = self.expected.popleft()
        assert direction == want_direction and same(message, want), (message, want)
        return to_sender

    # ------------------------------------------------------------------ job frames

    def from_client(self, message: Message) -> None:
        assert not self.expected, f"{message} before the reply to the last frame"
        if isinstance(message, ResultsRequest):
            assert message.job_id in self.results
            return
        assert isinstance(message, CLIENT_EVENTS), message
        try:
            action = self.session.receive(message)
        except RemoteProtocolError as exc:
            self.expected.append((W2C, ProtocolErrorFrame(exc.code, exc.detail), False))
            return
        match action:
            case SetJobId(job_id=job_id):
                assert job_id == message.job_id  # type: ignore[attr-defined]
            case ValidateInput(path=path):
                self.pending_path = ("input", path)
            case PrepareOutput(path=path):
                self.pending_path = ("output", path)
            case StartJob():
                self.job, self.cancelled = action, False
            case CancelJob():
                self.cancelled = True

    def from_worker(self, message: Message) -> None:
        if isinstance(message, ProtocolErrorFrame):
            assert self.take_expected(W2C, message) is False
            return
        assert not self.expected, f"{message} before the worker's reply"
        match message:
            case PathValidated(which=which):
                assert self.pending_path is not None and self.pending_path[0] == which
                path = self.pending_path[1]
                self.session.report(
                    InputAccepted(path) if which == "input" else OutputAccepted(path)
                )
                self.pending_path = None
            case PathError(reason=reason):
                assert self.pending_path is not None
                which, path = self.pending_path
                assert any(reason == f"{prefix}: {path}" for prefix in PATH_ERROR_PREFIXES)
                self.session.report(InputRejected() if which == "input" else OutputRejected())
                self.pending_path = None
            case JobLog() | JobMetrics():
                assert self.session.state is JobState.RUNNING
            case JobComplete() | JobFailed():
                self.job_ended(message)
            case _:
                raise AssertionError(f"unexpected worker frame {message}")

    def job_ended(self, message: JobComplete | JobFailed) -> None:
        job = self.job
        assert job is not None and self.session.state is JobState.RUNNING
        job_id = message.job_id
        if job.job_id == GENERATED:
            assert _WORKER_JOB_ID.fullmatch(job_id)
        else:
            assert job_id == job.job_id
        if isinstance(message, JobComplete):
            assert not self.cancelled
            if job.output_path is None:
                assert job.input_received
                assert message.output_path == f".rtc-jobs/{job_id}/output"
                self.results.add(job_id)
            else:
                assert message.output_path == job.output_path
        elif self.cancelled:
            assert message.reason == "cancelled"
        self.session.report(JobFinished())
        self.job = None

    # ------------------------------------------------------------------ transfers

    def run(self, lane: Lane, effects: list) -> None:
        for effect in effects:
            match effect:
                case Send(message=message):
                    self.expected.append((lane.receiver_direction, message, True))
                case CheckStore(meta=meta):
                    lane.pending = "check"
                    if isinstance(meta, FileMetaLegacy):  # no look-up, no reply: chunks follow
                        lane.pending, lane.base = None, b""
                        self.run(lane, lane.receiver.report(StoreOffset(0)))
                case Append(data=data):
                    lane.data += data
                case Finish():
                    lane.pending = "finish"
                case Discard(keep=keep):
                    assert lane.meta is not None
                    key = getattr(lane.meta, "sha256", "")
                    if keep and lane.base is not None:
                        lane.kept[key] = lane.base + bytes(lane.data)
                    else:
                        lane.kept.pop(key, None)
                case Note():
                    pass
                case _:
                    raise AssertionError(effect)

    def from_sender(self, lane: Lane, message: Message) -> None:
        assert not self.expected, f"{message} before the reply to the last frame"
        assert lane.pending is None
        legacy = isinstance(lane.meta, FileMetaLegacy) or isinstance(message, FileMetaLegacy)
        match message:
            case FileMeta() | FileMetaLegacy():
                if isinstance(message, FileMeta):
                    assert lane.sender.send(message) is message
                lane.meta, lane.base = message, b""
                lane.data, lane.chunk_sizes = bytearray(), []
            case EndOfFile() if not legacy:
                assert lane.sender.send(message) == message
            case FileCancel():
                assert lane.sender.cancel() == FileCancel()
            case Chunk(data=data):
                lane.chunk_sizes.append(len(data))
        try:
            effects = lane.receiver.receive(message)
        except RemoteProtocolError as exc:
            assert isinstance(message, Chunk) and exc.code == ErrorCode.UNEXPECTED_DATA
            refusal = TransferError(TransferErrorCode.UNEXPECTED_DATA, exc.detail)
            self.expected.append((lane.receiver_direction, refusal, False))
            return
        self.run(lane, effects)

    def resolve(self, lane: Lane, message: Message) -> None:
        """A store answer: report it to the receiver, whose reply must be ``message``."""
        meta = lane.meta
        assert meta is not None
        if lane.pending == "check":
            lane.pending = None
            match message:
                case FileReady(offset=offset):
                    held = lane.kept.get(getattr(meta, "sha256", ""))
                    if held is not None:
                        assert offset == len(held), "resume offset != bytes kept"
                    lane.base = held if held is not None else (b"" if offset == 0 else None)
                    self.run(lane, lane.receiver.report(StoreOffset(offset)))
                case FileExists():
                    self.run(lane, lane.receiver.report(StoreHas()))
                case _:
                    raise AssertionError(f"{message} does not answer a store look-up")
        else:
            lane.pending = None
            whole = None if lane.base is None else lane.base + bytes(lane.data)
            match message:
                case FileReceived(sha256=sha):
                    if whole is not None:
                        assert hashlib.sha256(whole).hexdigest() == sha
                    else:
                        assert len(lane.data) < meta.size
                    if isinstance(meta, FileMeta):
                        assert sha == meta.sha256
                        assert all(n == meta.chunk_size for n in lane.chunk_sizes[:-1])
                        assert all(0 < n <= meta.chunk_size for n in lane.chunk_sizes)
                    self.run(lane, lane.receiver.report(Stored(sha)))
                case TransferError(code=TransferErrorCode.HASH_MISMATCH):
                    if whole is not None and isinstance(meta, FileMeta):
                        assert hashlib.sha256(whole).hexdigest() != meta.sha256
                    failed = StoreFailed(TransferErrorCode.HASH_MISMATCH, "", keep_partial=False)
                    self.run(lane, lane.receiver.report(failed))
                case _:
                    raise AssertionError(f"{message} does not answer a verification")

    def from_receiver(self, lane: Lane, message: Message) -> None:
        meta = lane.meta
        if lane.pending is not None:
            self.resolve(lane, message)
        to_sender = self.take_expected(lane.receiver_direction, message)
        if to_sender is None:  # nothing the machine sent: a paced FILE_PROGRESS
            assert isinstance(message, FileProgress), message
            assert meta is not None and lane.receiver.state is ReceiverState.RECEIVING
            assert message.size == meta.size
            assert message.received == lane.receiver.received
            to_sender = True
        if to_sender and not isinstance(meta, FileMetaLegacy):
            assert lane.sender.receive(message) is None
        if isinstance(message, FileReceived | FileExists):
            assert meta is not None
            sha = message.sha256
            lane.kept.pop(sha, None)
            if lane is self.up:  # the file becomes the input of the next job
                self.session.report(FileAccepted(f".rtc-store/objects/{sha[:2]}/{sha}", meta.name))


def kinds_seen(exchange: list[tuple[str, str | bytes]]) -> list[tuple[str, Message]]:
    return [(direction, decode(frame)) for direction, frame in exchange]


EXCHANGE_SHAPES: dict[str, Callable[[list[tuple[str, Message]]], bool]] = {
    "shared_job": lambda ms: (
        {SharedInputPath, SharedOutputPath, PathValidated, JobStart} <= {type(m) for _, m in ms}
        and any(isinstance(m, JobComplete | JobFailed) for _, m in ms)
    ),
    "transfer": lambda ms: (
        {FileMeta, FileReady, EndOfFile, FileReceived} <= {type(m) for _, m in ms}
    ),
    "resume": lambda ms: (
        any(isinstance(m, FileReceived) for _, m in ms)
        and any(
            (isinstance(m, FileReady) and m.offset > 0) or isinstance(m, FileCancel) for _, m in ms
        )
    ),
    "dedupe": lambda ms: (
        any(isinstance(m, FileExists) for _, m in ms)
        and not any(isinstance(m, Chunk) for _, m in ms)
    ),
    "results": lambda ms: (
        any(isinstance(m, ResultsRequest) for _, m in ms)
        and any(
            d == W2C and isinstance(m, FileMeta) and m.name.startswith("results-") for d, m in ms
        )
        and any(d == C2W and isinstance(m, FileReceived) for d, m in ms)
    ),
    "cancel": lambda ms: any(isinstance(m, JobCancel | FileCancel) for _, m in ms),
    "error": lambda ms: any(
        isinstance(m, PathError | ProtocolErrorFrame | TransferError) for _, m in ms
    ),
    "legacy": lambda ms: any(isinstance(m, FileMetaLegacy) for _, m in ms),
}


@pytest.mark.parametrize("kind", EXCHANGE_KINDS)
@settings(QUICK, max_examples=25)
@given(data=st.data())
def test_each_kind_of_exchange_is_accepted_by_the_machines(kind: str, data: st.DataObject) -> None:
    exchange = data.draw(exchanges(kinds=(kind,), max_parts=1))
    assert EXCHANGE_SHAPES[kind](kinds_seen(exchange))
    ExchangePlayer().play(exchange)


@settings(QUICK, max_examples=60)
@given(exchanges(max_parts=4))
def test_exchanges_one_after_another_on_one_channel(
    exchange: list[tuple[str, str | bytes]],
) -> None:
    ExchangePlayer().play(exchange)


@settings(QUICK, max_examples=20)
@given(exchanges(kinds=("error",), max_file_size=1000))
def test_exchanges_honour_a_smaller_maximum_file_size(
    exchange: list[tuple[str, str | bytes]],
) -> None:
    ExchangePlayer(max_file_size=1000).play(exchange)


def test_path_error_prefixes_are_the_storage_layer_reasons() -> None:
    assert set(PATH_ERROR_PREFIXES) == {kind.value for kind in PathErrorKind}


def test_the_player_notices_an_inconsistent_exchange() -> None:
    good = [
        (C2W, "FILE_META::a.bin::3::" + hashlib.sha256(b"abc").hexdigest() + "::2"),
        (W2C, "FILE_READY::0"),
        (C2W, b"ab"),
        (C2W, b"c"),
        (C2W, "END_OF_FILE"),
        (W2C, "FILE_RECEIVED::" + hashlib.sha256(b"abc").hexdigest()),
    ]
    ExchangePlayer().play(good)
    wrong_bytes = [*good[:3], (C2W, b"x"), *good[4:]]
    with pytest.raises(AssertionError):
        ExchangePlayer().play(wrong_bytes)
    early_start = [(C2W, "JOB_START"), (W2C, "PATH_VALIDATED::input")]
    with pytest.raises(AssertionError):
        ExchangePlayer().play(early_start)


# ================================================= every (state, event) of every table


class Machine:
    """What the sampled-pair tests need of one state machine."""

    states: tuple
    table: dict
    event_types: tuple[type, ...]

    def snapshot(self) -> tuple:
        raise NotImplementedError

    def fire(self, event: Any) -> None:
        raise NotImplementedError

    @property
    def state(self) -> Any:
        raise NotImplementedError

    def local(self, event: Any) -> bool:
        """Whether a refusal of ``event`` blames us (LocalProtocolError) or the peer."""
        return not isinstance(event, Message)

    def alternatives(self, key: tuple) -> set:
        """Next states a handler may choose instead of the table's (aborts, shortcuts)."""
        return set()

    def may_refuse(self, key: tuple, exc: ProtocolError, event: Any) -> bool:
        """Whether a pair inside the table may still be refused (bad values)."""
        return False

    def event(self, draw: Any, event_type: type) -> Any:
        raise NotImplementedError

    def route(self, draw: Any, target: Any) -> list[Any]:
        raise NotImplementedError


def check_step(machine: Machine, event: Any) -> None:
    """Fire ``event``: a next state allowed by the table, or a ProtocolError that changes
    nothing (UNEXPECTED_MESSAGE/UNEXPECTED_DATA outside the table)."""
    before = machine.snapshot()
    key = (machine.state, type(event))
    try:
        machine.fire(event)
    except ProtocolError as exc:
        assert machine.snapshot() == before, f"{key} refused but changed the machine"
        if key in machine.table:
            assert machine.may_refuse(key, exc, event), f"{key} is in the table: {exc!r}"
        else:
            assert exc.code in (ErrorCode.UNEXPECTED_MESSAGE, ErrorCode.UNEXPECTED_DATA), exc
            want = LocalProtocolError if machine.local(event) else RemoteProtocolError
            assert type(exc) is want, (key, exc)
        return
    assert key in machine.table, f"{key} is not in the table but was accepted"
    assert machine.state in {machine.table[key], *machine.alternatives(key)}, (
        key,
        machine.state,
    )


def sampled_pair_test(machine: Machine, data: st.DataObject, target: Any, event_type: type) -> None:
    for _ in range(data.draw(st.integers(0, 10), label="prefix length")):
        event_type_ = data.draw(st.sampled_from(machine.event_types), label="prefix event type")
        check_step(machine, machine.event(data.draw, event_type_))
    for event in machine.route(data.draw, target):
        check_step(machine, event)
    assert machine.state is target, (machine.state, target)
    check_step(machine, machine.event(data.draw, event_type))


# ---------------------------------------------------------------------------- job


class JobMachine(Machine):
    states = tuple(JobState)
    table = TRANSITIONS
    event_types = (*CLIENT_EVENTS, *INTERNAL_EVENTS, ResultsRequest, FileMeta)

    def __init__(self) -> None:
        self.session = JobSession(job_id_factory=lambda: "job-0123456789ab")

    @property
    def state(self) -> JobState:
        return self.session.state

    def snapshot(self) -> tuple:
        s = self.session
        return (s.state, s.job_id, s.input_path, s.output_path, s.input_received)

    def fire(self, event: Any) -> None:
        if isinstance(event, Message):
            self.session.receive(event)
        else:
            self.session.report(event)

    def event(self, draw: Any, event_type: type) -> Any:
        path = st.sampled_from(["in.zip", "a::b/c d", "out", "中文"])
        makers: dict[type, Any] = {
            JobId: lambda: JobId(draw(job_ids())),
            SharedInputPath: lambda: SharedInputPath(draw(path)),
            SharedOutputPath: lambda: SharedOutputPath(draw(path)),
            JobStart: lambda: JobStart(legacy=draw(st.booleans())),
            JobCancel: JobCancel,
            InputAccepted: lambda: InputAccepted(draw(path)),
            FileAccepted: lambda: FileAccepted(".rtc-store/objects/ab/abc", draw(path)),
            InputRejected: InputRejected,
            OutputAccepted: lambda: OutputAccepted(draw(path)),
            OutputRejected: OutputRejected,
            JobFinished: JobFinished,
            ResultsRequest: lambda: ResultsRequest("job-1"),
            FileMeta: lambda: FileMeta("a", 1, "0" * 64),
        }
        return makers[event_type]()

    def route(self, draw: Any, target: JobState) -> list[Any]:
        S = JobState
        events: list[Any] = []
        state = self.state
        # back to IDLE
        back = {
            S.RUNNING: [JobFinished()],
            S.READY: [InputRejected(), OutputRejected()],
            S.HAVE_OUTPUT: [OutputRejected()],
            S.HAVE_INPUT: [InputRejected()],
            S.HAVE_FILE: [InputRejected()],
            S.IDLE: [],
        }
        events += back[state]
        path = draw(st.sampled_from(["in.zip", "x/y", "中 文"]))
        have_input = [SharedInputPath(path), InputAccepted(path)]
        have_file = [FileAccepted(".rtc-store/objects/ab/abc", "in.zip")]
        have_output = [SharedOutputPath("out"), OutputAccepted("out")]
        if draw(st.booleans()):
            events.append(JobId(draw(job_ids())))
        if target is S.HAVE_INPUT:
            events += have_input
        elif target is S.HAVE_FILE:
            events += have_file
        elif target is S.HAVE_OUTPUT:
            events += have_output
        elif target in (S.READY, S.RUNNING):
            with_file = draw(st.booleans())
            first = have_file if with_file else have_input
            parts = [first, have_output] if draw(st.booleans()) else [have_output, first]
            if target is S.RUNNING and with_file and draw(st.booleans()):
                parts = [have_file]  # a received file alone may start
            for part in parts:
                events += part
            if target is S.RUNNING:
                events.append(JobStart())
        return events


@settings(QUICK, max_examples=150)
@given(
    data=st.data(),
    target=st.sampled_from(tuple(JobState)),
    event_type=st.sampled_from(JobMachine.event_types),
)
def test_job_session_any_state_any_event(
    data: st.DataObject, target: JobState, event_type: type
) -> None:
    sampled_pair_test(JobMachine(), data, target, event_type)


# ---------------------------------------------------------------------- receiver

R = ReceiverState
_SHA_A = hashlib.sha256(b"a").hexdigest()


class ReceiverMachine(Machine):
    states = tuple(ReceiverState)
    table = RECEIVER_TRANSITIONS
    event_types = (
        FileMeta,
        FileMetaLegacy,
        Chunk,
        EndOfFile,
        FileCancel,
        StoreHas,
        StoreOffset,
        Stored,
        StoreFailed,
        FileReady,
    )
    MAX_SIZE = 100
    MAX_CHUNK = 16

    def __init__(self) -> None:
        self.r = TransferReceiver(max_size=self.MAX_SIZE, max_chunk_size=self.MAX_CHUNK)
        self.now = 0.0

    @property
    def state(self) -> ReceiverState:
        return self.r.state

    def snapshot(self) -> tuple:
        r = self.r
        return (r.state, r.meta, r.received, r.last_stored, r._last_progress, r._legacy_done)

    def fire(self, event: Any) -> None:
        self.now += 0.3
        if isinstance(event, Message):
            self.r.receive(event, self.now)
        else:
            self.r.report(event)

    def alternatives(self, key: tuple) -> set:
        event_type = key[1]
        if event_type in (FileMeta, FileMetaLegacy):
            return {R.IDLE, R.DRAINING}  # refused names and sizes
        if key == (R.RECEIVING, Chunk):
            return {R.DRAINING, R.VERIFYING}  # an aborted chunk; a legacy file's last one
        if key == (R.RECEIVING, EndOfFile):
            return {R.IDLE}  # bytes missing: SIZE_MISMATCH
        if key == (R.CHECKING, StoreOffset):
            return {R.VERIFYING}  # an empty legacy file
        return set()

    def may_refuse(self, key: tuple, exc: ProtocolError, event: Any) -> bool:
        if key == (R.IDLE, EndOfFile):  # only after a legacy transfer
            return type(exc) is RemoteProtocolError and exc.code == ErrorCode.UNEXPECTED_MESSAGE
        # the adapter reported something impossible (offset out of range, another sha256,
        # a dedupe for a legacy transfer): its bug, raised locally
        return type(exc) is LocalProtocolError and exc.code == ErrorCode.INTERNAL_ERROR

    def _meta_size(self) -> int:
        return self.r.meta.size if self.r.meta is not None else 10

    def event(self, draw: Any, event_type: type) -> Any:
        name = st.sampled_from(["a.bin", "v1::c", "中文.zip", "../x", "C:y", ".", "b::c"])
        size = st.integers(0, self.MAX_SIZE + 20)
        sha = st.sampled_from([_SHA_A, getattr(self.r.meta, "sha256", _SHA_A)]) | sha256_hex()
        makers: dict[type, Any] = {
            FileMeta: lambda: FileMeta(
                draw(name), draw(size), draw(sha), draw(st.integers(1, self.MAX_CHUNK + 4))
            ),
            FileMetaLegacy: lambda: FileMetaLegacy(
                draw(name.filter(lambda n: "::" not in n)), draw(size)
            ),
            Chunk: lambda: Chunk(draw(st.binary(max_size=self.MAX_CHUNK + 4))),
            EndOfFile: EndOfFile,
            FileCancel: FileCancel,
            StoreHas: StoreHas,
            StoreOffset: lambda: StoreOffset(draw(st.integers(0, self._meta_size() + 3))),
            Stored: lambda: Stored(draw(sha)),
            StoreFailed: lambda: StoreFailed(
                draw(st.sampled_from(list(TransferErrorCode))), "failed", draw(st.booleans())
            ),
            FileReady: lambda: FileReady(0),
        }
        return makers[event_type]()

    def route(self, draw: Any, target: ReceiverState) -> list[Any]:
        # Back to IDLE, then the normal path to the target, with drawn values.
        events: list[Any] = []
        state = self.state
        back = {
            R.CHECKING: [StoreFailed(TransferErrorCode.CANCELLED, "busy")],
            R.RECEIVING: [FileCancel()],
            R.VERIFYING: [StoreFailed(TransferErrorCode.HASH_MISMATCH, "bad", False)],
            R.DRAINING: [EndOfFile()],
            R.IDLE: [],
        }
        events += back[state]
        if target is R.IDLE:
            return events
        legacy = target in (R.CHECKING, R.RECEIVING, R.VERIFYING) and draw(st.booleans())
        size = draw(st.integers(1, self.MAX_SIZE))
        data = bytes(draw(st.binary(min_size=size, max_size=size)))
        name = draw(st.sampled_from(["a.bin", "v1:y", "中文"]))
        if target is R.DRAINING and draw(st.booleans()):
            return [*events, FileMetaLegacy("../bad", size)]  # refused: its chunks drain
        if legacy:
            events.append(FileMetaLegacy(name, size))
            chunk_size, offset = self.MAX_CHUNK, 0
        else:
            chunk_size = draw(st.integers(1, self.MAX_CHUNK))
            events.append(FileMeta(name, size, hashlib.sha256(data).hexdigest(), chunk_size))
        if target is R.CHECKING:
            return events
        if not legacy:
            offset = draw(st.integers(0, size))
        events.append(StoreOffset(offset))
        if target is R.DRAINING:
            if draw(st.booleans()):
                return [*events, Chunk(b"x" * (chunk_size + 1))]  # above chunk_size
            return [*events, StoreFailed(TransferErrorCode.DISK_FULL, "full")]
        stop = size if target is R.VERIFYING else draw(st.integers(offset, size))
        if legacy and target is R.RECEIVING:
            stop = min(stop, size - 1)  # the last byte would finish a legacy transfer
        for start in range(offset, stop, chunk_size):
            events.append(Chunk(data[start : min(start + chunk_size, stop)]))
        if target is R.VERIFYING and not legacy:
            events.append(EndOfFile())
        return events


@settings(QUICK, max_examples=200)
@given(
    data=st.data(),
    target=st.sampled_from(tuple(ReceiverState)),
    event_type=st.sampled_from(ReceiverMachine.event_types),
)
def test_transfer_receiver_any_state_any_event(
    data: st.DataObject, target: ReceiverState, event_type: type
) -> None:
    sampled_pair_test(ReceiverMachine(), data, target, event_type)


# ------------------------------------------------------------------------ sender

SS = SenderState


class SenderMachine(Machine):
    states = tuple(SenderState)
    table = SENDER_TRANSITIONS
    event_types = (
        FileMeta,
        EndOfFile,
        FileReady,
        FileExists,
        FileProgress,
        FileReceived,
        TransferError,
        FileCancel,
        FileMetaLegacy,
        Chunk,
    )

    def __init__(self) -> None:
        self.s = TransferSender()

    @property
    def state(self) -> SenderState:
        return self.s.state

    def snapshot(self) -> tuple:
        s = self.s
        return (s.state, s.meta, s.offset, s.progress, s.outcome)

    def fire(self, event: Any) -> None:
        if event == "cancel":
            self.s.cancel()
        elif event == "forget":
            self.s.forget_cancel()
        elif isinstance(event, FileMeta | EndOfFile):
            self.s.send(event)
        else:
            self.s.receive(event)

    def local(self, event: Any) -> bool:
        return isinstance(event, FileMeta | EndOfFile)  # what we send

    def alternatives(self, key: tuple) -> set:
        if key == (SS.AWAIT_READY, FileReady):
            return {SS.IDLE}  # an offset beyond the file: failed
        if key == (SS.CANCELLED, TransferError):
            return {SS.CANCELLED}  # an error other than CANCELLED is absorbed
        return set()

    def may_refuse(self, key: tuple, exc: ProtocolError, event: Any) -> bool:
        # FILE_EXISTS naming another sha256 than ours
        return (
            key == (SS.AWAIT_READY, FileExists)
            and type(exc) is RemoteProtocolError
            and exc.code == ErrorCode.MALFORMED_FRAME
        )

    def event(self, draw: Any, event_type: type) -> Any:
        meta = self.s.meta
        size = meta.size if meta is not None else 10
        sha = st.sampled_from([meta.sha256 if meta else _SHA_A, _SHA_A]) | sha256_hex()
        makers: dict[type, Any] = {
            FileMeta: lambda: FileMeta("a.bin", draw(st.integers(0, 50)), draw(sha), 8),
            EndOfFile: EndOfFile,
            FileReady: lambda: FileReady(draw(st.integers(0, size + 2))),
            FileExists: lambda: FileExists(draw(sha)),
            FileProgress: lambda: FileProgress(draw(st.integers(0, size)), size),
            FileReceived: lambda: FileReceived(draw(sha)),
            TransferError: lambda: TransferError(
                draw(st.sampled_from(list(TransferErrorCode))), "detail"
            ),
            FileCancel: FileCancel,
            FileMetaLegacy: lambda: FileMetaLegacy("a", 1),
            Chunk: lambda: Chunk(b"x"),
        }
        return makers[event_type]()

    def route(self, draw: Any, target: SenderState) -> list[Any]:
        events: list[Any] = []
        state = self.state
        if state is SS.CANCELLED:
            events.append(
                draw(st.sampled_from([TransferError(TransferErrorCode.CANCELLED, "ok"), "forget"]))
            )
        elif state is not SS.IDLE:
            events.append(TransferError(TransferErrorCode.DISK_FULL, "full"))
        if target is SS.IDLE:
            return events
        size = draw(st.integers(0, 50))
        events.append(FileMeta("a.bin", size, draw(sha256_hex()), 8))
        stop_at = target
        if target is SS.CANCELLED:  # cancelled from any open state
            stop_at = draw(st.sampled_from([SS.AWAIT_READY, SS.SENDING, SS.AWAIT_RECEIVED]))
        if stop_at in (SS.SENDING, SS.AWAIT_RECEIVED):
            events.append(FileReady(draw(st.integers(0, size))))
            if draw(st.booleans()):
                events.append(FileProgress(size, size))
        if stop_at is SS.AWAIT_RECEIVED:
            events.append(EndOfFile())
        if target is SS.CANCELLED:
            events.append("cancel")
        return events


def check_sender_step(machine: SenderMachine, event: Any) -> None:
    if isinstance(event, str):  # cancel() and forget_cancel(): API calls outside the table
        before = machine.snapshot()
        try:
            machine.fire(event)
        except LocalProtocolError:
            assert machine.snapshot() == before
        else:
            want = SS.CANCELLED if event == "cancel" else SS.IDLE
            assert machine.state is want
        return
    check_step(machine, event)


@settings(QUICK, max_examples=150)
@given(
    data=st.data(),
    target=st.sampled_from(tuple(SenderState)),
    event_type=st.sampled_from(SenderMachine.event_types),
)
def test_transfer_sender_any_state_any_event(
    data: st.DataObject, target: SenderState, event_type: type
) -> None:
    machine = SenderMachine()
    for _ in range(data.draw(st.integers(0, 10), label="prefix length")):
        kind = data.draw(st.sampled_from([*machine.event_types, "cancel", "forget"]))
        check_sender_step(
            machine, kind if isinstance(kind, str) else machine.event(data.draw, kind)
        )
    for event in machine.route(data.draw, target):
        check_sender_step(machine, event)
    assert machine.state is target
    check_sender_step(machine, machine.event(data.draw, event_type))


# =========================================================================== signaling


@settings(QUICK, max_examples=150)
@given(client_signaling_frames())
def test_client_signaling_frames_round_trip(frame: Any) -> None:
    text = dump_frame(frame)
    assert parse_client_frame(text) == frame
    assert dump_frame(parse_client_frame(text)) == text


@settings(QUICK, max_examples=100)
@given(server_signaling_frames())
def test_server_signaling_frames_round_trip(frame: Any) -> None:
    text = dump_frame(frame)
    assert parse_server_frame(text) == frame


@settings(QUICK, max_examples=300)
@given(malformed_signaling_frames_with_codes())
def test_malformed_signaling_frames_raise_signaling_errors_only(pair: tuple[str, str]) -> None:
    text, code = pair
    with pytest.raises(SignalingError) as info:
        parse_client_frame(text)
    assert info.value.code == code


@settings(QUICK, max_examples=200)
@given(
    st.one_of(
        st.text(_ANY_CHAR, max_size=200),
        st.builds(
            lambda frame, cut: dump_frame(frame)[:cut],
            client_signaling_frames(),
            st.integers(0, 100),
        ),
    )
)
def test_parse_client_frame_of_anything_is_a_frame_or_a_signaling_error(text: str) -> None:
    try:
        frame = parse_client_frame(text)
    except SignalingError as exc:
        assert exc.code in {"INVALID_JSON", "INVALID_FRAME", "UNKNOWN_TYPE", "FRAME_TOO_LARGE"}
    else:
        assert parse_client_frame(dump_frame(frame)) == frame
