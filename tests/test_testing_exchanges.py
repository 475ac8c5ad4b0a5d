"""The exchanges() strategy and the ConnectionPair it runs on: every kind produces all
its variants, every exchange keeps the protocol's invariants, stays within the limits
given, and replays exactly into a fresh worker Connection whose actions are performed
with the outcomes the exchange shows (``tests/exchange_replay.py``)."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings

from protocol import events as ev
from protocol.codec import decode, encode
from protocol.errors import PathReason, TransferErrorCode
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.messages import (
    JobCancel,
    JobComplete,
    JobFailed,
    JobId,
    JobLog,
    JobMetrics,
    JobStart,
    PathError,
    PathValidated,
    ProtocolErrorFrame,
    ResultsRequest,
    ResultsStored,
    ResultsViaStorage,
    SharedInputPath,
    SharedOutputPath,
)
from protocol.proof import proof_digest
from protocol.testing import (
    C2W,
    EXCHANGE_KINDS,
    W2C,
    ConnectionPair,
    Exchange,
    SimulatedStore,
    SimulatedWorld,
    exchanges,
)
from protocol.transfer_messages import (
    Chunk,
    EndOfFile,
    FileCancel,
    FileExists,
    FileMeta,
    FileMetaLegacy,
    FileProgress,
    FileProof,
    FileProofRequest,
    FileReady,
    FileReceived,
    TransferError,
)
from tests.exchange_replay import ReplayError, replay
from tests.protocol_helpers import draw_until, sha256

T = TypeVar("T")
QUICK = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ===================================================================== invariants


def check_invariants(exchange: Exchange, limits: Limits = DEFAULT_LIMITS) -> None:
    """What holds for any exchange of two conforming peers, read from the frames alone."""
    other = {C2W: W2C, W2C: C2W}
    started = ended = paths = answered = requests = 0
    metas: dict[str, FileMeta | FileMetaLegacy | None] = {C2W: None, W2C: None}
    offsets = {C2W: 0, W2C: 0}
    crossed = {C2W: bytearray(), W2C: bytearray()}
    asked: dict[str, FileProofRequest | None] = {C2W: None, W2C: None}
    for direction, frame in exchange:
        assert direction in (C2W, W2C)
        message = decode(frame, limits)  # within the limits given
        assert encode(message) == frame
        sender = other[direction]  # for a receiver's frame: who sends the file
        match message:
            case JobStart():
                assert direction == C2W
                started += 1
            case JobLog() | JobMetrics() | JobComplete() | JobFailed():
                assert direction == W2C and started > ended, "a job's frame without JOB_START"
                ended += isinstance(message, JobComplete | JobFailed)
            case SharedInputPath() | SharedOutputPath():
                paths += 1
            case PathValidated():
                answered += 1
                assert answered <= paths, "PATH_VALIDATED without a path"
            case ResultsRequest():
                requests += 1
            case FileMeta() | FileMetaLegacy():
                if direction == W2C:
                    assert requests > 0, "the worker sends a file nobody asked for"
                metas[direction], offsets[direction] = message, 0
                crossed[direction], asked[direction] = bytearray(), None
            case FileProofRequest(ranges=ranges):
                meta = metas[sender]
                assert isinstance(meta, FileMeta) and asked[sender] is None, "one proof"
                assert meta.size > 0 and message.end <= meta.size, "ranges within the file"
                assert len(ranges) <= limits.proof_ranges
                asked[sender] = message
            case FileProof():
                assert asked[direction] is not None, "FILE_PROOF without FILE_PROOF_REQUEST"
            case FileReady(offset=offset):
                assert isinstance(metas[sender], FileMeta), "FILE_READY without FILE_META"
                offsets[sender] = offset
            case FileExists(sha256=sha):
                meta = metas[sender]
                assert isinstance(meta, FileMeta) and sha == meta.sha256
            case Chunk(data=data):
                meta = metas[direction]
                if isinstance(meta, FileMeta):
                    assert len(data) <= meta.chunk_size, "a chunk above chunk_size"
                crossed[direction] += data
            case FileReceived(sha256=sha):
                meta = metas[sender]
                assert meta is not None, "FILE_RECEIVED without FILE_META"
                if isinstance(meta, FileMeta):
                    assert sha == meta.sha256
                if offsets[sender] == 0:  # every byte crossed on this channel
                    assert sha == sha256(bytes(crossed[sender])), "not the bytes that crossed"
            case ResultsStored():
                assert direction == W2C and ended > 0
    assert ended <= started


# ===================================================================== variants


def is_outside(path: str) -> bool:
    """A path the worker refuses before looking at the disk."""
    return path.startswith("/") or ".." in path.split("/") or "\\" in path or path[1:2] == ":"


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
        seen.add("whole" if any(m == FileReady(0) for _, m in ms) else "continued")
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
                seen.add("proved" if FileProof in before else "owned")
            case FileReady(offset=0) if before[-1:] == [FileProofRequest]:
                seen.add("proof deadline")
            case FileReady(offset=0) if before[-1:] == [FileProof]:
                seen.add("proof then bytes")
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
    "transfer": {"received W->C", "progress", "whole", "proof then bytes"},
    "resume": {"continued", "cut and resumed", "progress"},
    "dedupe": {"dedupe", "proved", "owned"},
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
        "refused DISK_FULL",
        "proof then bytes",
        "proof deadline",
    },
    "legacy": {"received W->C", "legacy end of file"},
}


def test_every_kind_has_its_variants() -> None:
    assert set(VARIANTS) == set(EXCHANGE_KINDS)


@pytest.mark.parametrize("kind", EXCHANGE_KINDS)
def test_each_kind_produces_all_its_variants_and_each_replays(kind: str) -> None:
    found = draw_until(exchanges(kinds=(kind,), max_parts=1), VARIANTS[kind], features)
    for exchange in found:
        check_invariants(exchange)
        replay(exchange)


def forgets_the_file(exchange: Exchange) -> bool:
    """A held file (found at once, or after a proof), then a refused input path (which
    forgets it), then a refused JOB_START."""
    ms = [decode(frame) for _, frame in exchange]
    ms = [m for m in ms if not isinstance(m, FileProofRequest | FileProof)]
    types = [type(m) for m in ms]
    held = types[:4] == [FileMeta, FileExists, SharedInputPath, PathError]
    return held and JobStart in types and isinstance(ms[-1], ProtocolErrorFrame)


def test_a_received_file_is_forgotten_before_an_early_job_start() -> None:
    # JOB_START after a received file would run a job: the exchange first has the
    # worker refuse an input path, which forgets the file, so that JOB_START is refused.
    found = draw_until(
        exchanges(kinds=("dedupe", "error"), max_parts=2, max_file_bytes=16),
        {True},
        lambda e: {forgets_the_file(e)},
    )
    for exchange in found:
        replay(exchange)


@settings(QUICK, max_examples=60)
@given(exchanges(max_parts=4))
def test_exchanges_one_after_another_on_one_channel(exchange: Exchange) -> None:
    check_invariants(exchange)
    replay(exchange)


@settings(QUICK, max_examples=20)
@given(exchanges(kinds=("error", "transfer"), max_file_size=1000))
def test_exchanges_honour_a_smaller_maximum_file_size(exchange: Exchange) -> None:
    check_invariants(exchange)
    replay(exchange, limits=Limits(max_file_bytes=1000))


SMALL = Limits(max_text_frame_bytes=1200, max_binary_frame_bytes=200, max_path_bytes=300)


@settings(QUICK, max_examples=30)
@given(exchanges(limits=SMALL, max_file_bytes=600, max_chunks=4))
def test_exchanges_stay_within_the_limits_given(exchange: Exchange) -> None:
    check_invariants(exchange, SMALL)
    chunks = [f for _, f in exchange if isinstance(f, bytes)]
    assert all(len(chunk) <= SMALL.max_binary_frame_bytes for chunk in chunks)
    replay(exchange, limits=SMALL)


def test_exchanges_chain_parts() -> None:
    draw_until(exchanges(max_parts=4), {"long"}, lambda e: {"long" * (len(e) > 20)}, at_least=10)


@pytest.mark.parametrize("kinds", [(), ("nope",), ("transfer", "Transfer")])
def test_exchanges_refuse_unknown_kinds(kinds: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="kinds"):
        exchanges(kinds=kinds)


# ===================================================================== the replay and checks


NONCE = "c0" * 16
GOOD: Exchange = [
    (C2W, "FILE_META::a.bin::3::" + sha256(b"abc") + "::2"),
    (W2C, f"FILE_PROOF_REQUEST::{NONCE}::0+3"),
    (C2W, "FILE_PROOF::" + proof_digest(NONCE, [b"abc"])),
    (W2C, "FILE_READY::0"),
    (C2W, b"ab"),
    (W2C, "FILE_PROGRESS::2::3"),
    (C2W, b"c"),
    (W2C, "FILE_PROGRESS::3::3"),  # 0.6 s after the first
    (C2W, "END_OF_FILE"),
    (W2C, "FILE_RECEIVED::" + sha256(b"abc")),
]


@pytest.mark.parametrize(
    "broken",
    [
        [*GOOD[:6], (C2W, b"x"), *GOOD[7:]],  # other bytes than the verdict names
        [*GOOD[:5], *GOOD[6:]],  # a progress frame missing
        [(C2W, "JOB_START"), (W2C, "PATH_VALIDATED::input")],  # a reply nothing asked for
        [(C2W, "SHARED_INPUT_PATH::a"), (W2C, "JOB_LOG::x")],
        [*GOOD, (W2C, "FILE_RECEIVED::" + sha256(b"abc"))],  # a frame too many
    ],
    ids=["other bytes", "missing progress", "unasked reply", "wrong reply", "extra frame"],
)
def test_the_replay_notices_an_inconsistent_exchange(broken: Exchange) -> None:
    replay(GOOD)
    check_invariants(GOOD)
    with pytest.raises(AssertionError):
        replay(broken)


def test_the_invariants_notice_a_broken_exchange() -> None:
    wrong_sha = [*GOOD[:-1], (W2C, "FILE_RECEIVED::" + "0" * 64)]
    oversized = [(C2W, "FILE_META::a.bin::3::" + sha256(b"abc") + "::1"), (W2C, "FILE_READY::0")]
    for broken in (
        wrong_sha,
        [*oversized, (C2W, b"ab")],
        [(W2C, "JOB_COMPLETE::j::o::1::0.00")],
        [(W2C, "PATH_VALIDATED::input")],
        [(W2C, "FILE_META::r.zip::1::" + "0" * 64 + "::1")],
    ):
        with pytest.raises(AssertionError):
            check_invariants(broken)
    with pytest.raises(ReplayError, match="does not send"):
        replay([(W2C, "PATH_VALIDATED::input")])


# ===================================================================== the pair itself


def test_a_pair_records_both_directions_and_the_clients_events() -> None:
    pair = ConnectionPair()
    pair.send(JobId("run-1"))
    pair.send(ResultsViaStorage())
    pair.inject("HELLO")  # a frame a conforming client never sends
    assert pair.frames == [
        (C2W, "JOB_ID::run-1"),
        (C2W, "RESULTS_VIA_STORAGE"),
        (C2W, "HELLO"),
        (W2C, "PROTOCOL_ERROR::UNKNOWN_MESSAGE::unknown message type 'HELLO'"),
    ]
    # the client hands the worker's answer to its caller, as the refusal of nothing pending
    assert pair.events == [ev.Refused("UNKNOWN_MESSAGE", "unknown message type 'HELLO'", "")]
    assert pair.now == pytest.approx(1.2)


def test_an_upload_can_stop_short_or_be_cut() -> None:
    data = bytes(range(200))
    pair = ConnectionPair(limits=dataclasses.replace(DEFAULT_LIMITS, chunk_bytes=64))
    pair.upload(data, "a.bin", stop_at=128)
    assert pair.frames[-1][1].startswith("TRANSFER_ERROR::SIZE_MISMATCH")  # type: ignore[union-attr]
    assert pair.world.store.partials[sha256(data)] == data[:128]
    pair.cut_upload(data, "a.bin", 192)
    assert (C2W, "FILE_CANCEL") in pair.frames
    pair.upload(data, "a.bin")
    assert pair.frames[-1] == (W2C, f"FILE_RECEIVED::{sha256(data)}")
    assert (W2C, "FILE_READY::192") in pair.frames


def test_a_full_disk_stops_the_upload_mid_stream() -> None:
    data = bytes(range(200))
    pair = ConnectionPair(limits=dataclasses.replace(DEFAULT_LIMITS, chunk_bytes=64))
    pair.world.store.full_after = 100
    pair.upload(data, "a.bin")
    sent = [frame for direction, frame in pair.frames if isinstance(frame, bytes)]
    assert len(sent) == 2  # the third chunk is not sent: the transfer ended
    assert pair.frames[-1] == (W2C, "TRANSFER_ERROR::DISK_FULL::no space left")
    assert (C2W, "END_OF_FILE") not in pair.frames
    assert pair.world.store.partials == {sha256(data): data[:64]}  # kept for a resume
    replay(pair.frames)


def test_the_worlds_decisions_and_their_defaults() -> None:
    world = SimulatedWorld()
    assert world.check_path("../x", "input") is PathReason.OUTSIDE_ROOT
    assert isinstance(world.check_path("a", "input"), ev.InputAccepted)
    refusing = SimulatedWorld(decide=lambda name, options: options[-1])
    assert refusing.check_path("a", "input") is PathReason.CORRUPTED
    assert refusing.check_path("a", "output") is PathReason.PERMISSION_DENIED
    pair = ConnectionPair(SimulatedWorld(job_wait=True))
    pair.send(SharedInputPath("in"))
    pair.send(SharedOutputPath("out"))
    pair.send(JobStart())
    pair.send(JobCancel())
    failed = decode(pair.frames[-1][1])
    assert isinstance(failed, JobFailed) and failed.reason == "cancelled"
    assert pair.world.running is None and pair.worker.job == "IDLE"


def test_results_via_storage_are_stored_by_the_world() -> None:
    pair = ConnectionPair(job_id_factory=lambda: "run-10")
    pair.send(ResultsViaStorage())
    pair.send(SharedInputPath("in"))
    pair.send(SharedOutputPath("out"))
    pair.send(JobStart())
    assert pair.frames[-2:] == [
        (W2C, "JOB_COMPLETE::run-10::out::1::0.01"),
        (
            W2C,
            "RESULTS_STORED::run-10::/download/run-10::"
            + hashlib.sha256(b"run-10").hexdigest()
            + "::22::cap.abc_-",
        ),
    ]
    replay(pair.frames, job_id_factory=lambda: "run-10")


def test_the_store_ignores_actions_about_other_transfers() -> None:
    store = SimulatedStore()
    pair = ConnectionPair()
    conn = pair.worker
    store.perform(conn, ev.Append(7, b"x"), 0.0)  # nothing open: nothing written
    store.perform(conn, ev.Discard(7, keep=True), 0.0)
    store.perform(conn, ev.Note("not the store's"), 0.0)  # an adapter may hand it anything
    assert (store.partials, store.objects, conn.drain()) == ({}, {}, [])


def test_expiring_a_proof_that_nobody_awaits_changes_nothing() -> None:
    pair = ConnectionPair()
    before = list(pair.frames)
    pair.expire_proof()
    assert pair.frames == before and pair.world.store.awaiting_proof is None
    assert pair.worker.receiver.state == "IDLE"
