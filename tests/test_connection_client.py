"""A client Connection: it follows the worker's session from the replies, hands them to
its caller, attributes every PROTOCOL_ERROR to the request it answers, answers only a
misplaced chunk, and cannot send what the worker would refuse."""

from __future__ import annotations

import pytest

from protocol import events as ev
from protocol.connection import Capabilities
from protocol.errors import ErrorCode, LocalProtocolError, PathReason
from protocol.job import ClientJobState, JobState, Pending
from protocol.messages import (
    JobCancel,
    JobId,
    JobLog,
    JobStart,
    Message,
    PathValidated,
    ProtocolErrorFrame,
    ResultsRequest,
    ResultsStored,
    ResultsViaStorage,
    SharedInputPath,
    SharedOutputPath,
)
from protocol.routes import REQUEST_OF_CODE
from protocol.sender import SenderState
from protocol.testing import ConnectionPair, SimulatedWorld
from protocol.transfer import ReceiverState
from protocol.transfer_messages import Chunk, FileMeta, TransferError
from tests.protocol_helpers import (
    CLIENT_REACHABLE,
    INPUT,
    JOB,
    META,
    OUTPUT,
    SHA,
    client,
    client_in,
    deliver,
    feed,
    frames,
    one,
    say,
    sends,
    snapshot,
    tell,
    violations,
    worker,
    worker_in,
)

S, P = JobState, Pending


def test_a_shared_job_as_the_client_sees_it() -> None:
    conn = client()
    assert frames(say(conn, JobId("run-7"))) == ["JOB_ID::run-7"]
    assert frames(say(conn, SharedInputPath(INPUT))) == [f"SHARED_INPUT_PATH::{INPUT}"]
    assert conn.job == ClientJobState(S.IDLE, P.INPUT)
    assert feed(conn, "PATH_VALIDATED::input") == [ev.Delivered(PathValidated("input"))]
    say(conn, SharedOutputPath(OUTPUT))
    feed(conn, "PATH_VALIDATED::output")
    assert conn.job == ClientJobState(S.READY, P.NONE)
    assert frames(say(conn, JobStart(legacy=True))) == ["SHARED_STORAGE_JOB::start"]
    assert conn.job == ClientJobState(S.READY, P.START)
    assert feed(conn, "JOB_LOG::epoch 1") == [ev.Delivered(JobLog("epoch 1"))]
    assert conn.job == ClientJobState(S.RUNNING, P.NONE)
    feed(conn, 'JOB_METRICS::{"validation_ms":1,"file_access_ms":1,"run_s":1,"total_s":1}')
    outputs = feed(conn, "JOB_COMPLETE::run-7::outputs/run-1::1::0.00")
    assert [type(o) for o in outputs] == [ev.Delivered]
    assert conn.job == ClientJobState(S.IDLE, P.NONE)
    outputs = feed(conn, "RESULTS_STORED::run-7::/download/run-7")
    assert outputs == [ev.Delivered(ResultsStored("run-7", "/download/run-7"))]


def test_a_job_that_ends_before_its_first_frame_ends_the_wait() -> None:
    conn = client_in(ClientJobState(S.HAVE_FILE, P.START))
    one(feed(conn, f"JOB_FAILED::{JOB}::Job command exited with code 2"), ev.Delivered)
    assert conn.job == ClientJobState(S.IDLE, P.NONE)


# ===================================================================== PROTOCOL_ERROR


def cs(state: JobState, pending: Pending = Pending.NONE) -> ClientJobState:
    return ClientJobState(state, pending)


#: (client state, worker's PROTOCOL_ERROR code, the request it refuses, the state after)
ATTRIBUTIONS = [
    (cs(S.IDLE, P.INPUT), "NO_SHARED_STORAGE", "input", cs(S.IDLE)),
    (cs(S.READY, P.OUTPUT), "NO_SHARED_STORAGE", "output", cs(S.HAVE_INPUT)),
    (cs(S.HAVE_FILE, P.INPUT), "INTERNAL_ERROR", "input", cs(S.IDLE)),
    (cs(S.READY, P.START), "WORKER_BUSY", "start", cs(S.READY)),
    (cs(S.HAVE_FILE, P.START), "INTERNAL_ERROR", "start", cs(S.HAVE_FILE)),
    # a code that names another request than the pending one refuses nothing known
    (cs(S.IDLE, P.INPUT), "WORKER_BUSY", "", cs(S.IDLE, P.INPUT)),
    (cs(S.READY), "WORKER_BUSY", "", cs(S.READY)),
    (cs(S.READY), "NO_SHARED_STORAGE", "", cs(S.READY)),
    (cs(S.IDLE), "NO_STORAGE", "results_via_storage", cs(S.IDLE)),
    (cs(S.IDLE), "UNKNOWN_JOB", "", cs(S.IDLE)),
    (cs(S.IDLE), "UNEXPECTED_MESSAGE", "", cs(S.IDLE)),
    (cs(S.RUNNING), "FUTURE_CODE", "", cs(S.RUNNING)),
]


@pytest.mark.parametrize(("state", "code", "refused", "after"), ATTRIBUTIONS)
def test_a_protocol_error_is_handed_over_with_the_request_it_refuses(
    state: ClientJobState, code: str, refused: str, after: ClientJobState
) -> None:
    conn = client_in(state)
    outputs = feed(conn, f"PROTOCOL_ERROR::{code}::detail::with colons")
    assert outputs == [ev.Refused(code, "detail::with colons", refused)]
    assert conn.job == after
    assert not violations(outputs)  # an answer, not a violation: never answered back


def test_the_codes_that_name_their_request() -> None:
    assert REQUEST_OF_CODE == {
        "WORKER_BUSY": "start",
        "NO_SHARED_STORAGE": "path",
        "NO_STORAGE": "results_via_storage",
        "UNKNOWN_JOB": "results",
    }


@pytest.mark.parametrize("code", ["UNKNOWN_JOB", "UNEXPECTED_MESSAGE", "INTERNAL_ERROR"])
def test_a_refused_results_request_frees_the_receiver(code: str) -> None:
    conn = client()
    say(conn, ResultsRequest("nope"))
    outputs = feed(conn, f"PROTOCOL_ERROR::{code}::no results for job nope")
    assert outputs == [ev.Refused(code, "no results for job nope", "results")]
    assert conn.receiver.state is ReceiverState.IDLE
    say(conn, ResultsRequest("nope"))  # may ask again


def test_a_refused_file_ends_our_send() -> None:
    conn = client()
    conn.send_file(ev.FileToSend(META.name, META.size, META.sha256))
    conn.drain()
    outputs = feed(conn, "PROTOCOL_ERROR::UNEXPECTED_MESSAGE::can't handle FILE_META")
    ended = one(outputs, ev.SendEnded)
    assert (ended.status, ended.code) == ("failed", "UNEXPECTED_MESSAGE")
    assert outputs[-1] == ev.Refused("UNEXPECTED_MESSAGE", "can't handle FILE_META", "file")
    assert conn.sender.state is SenderState.IDLE


def test_a_pending_path_is_refused_before_a_pending_download() -> None:
    conn = client()
    say(conn, ResultsRequest("run-1"))
    say(conn, SharedInputPath(INPUT))
    assert one(feed(conn, "PROTOCOL_ERROR::INTERNAL_ERROR::x"), ev.Refused).request == "input"
    assert conn.receiver.state is ReceiverState.REQUESTED
    assert one(feed(conn, "PROTOCOL_ERROR::INTERNAL_ERROR::y"), ev.Refused).request == "results"


@pytest.mark.parametrize("which", ["input", "output"])
@pytest.mark.parametrize("check_first", [False, True], ids=["file first", "check first"])
@pytest.mark.parametrize("accepted", [True, False], ids=["accepted", "refused"])
def test_a_file_held_while_a_path_is_checked_is_followed_as_the_worker_takes_it(
    which: str, check_first: bool, accepted: bool
) -> None:
    """The client sends its file, then a path before either is answered; the worker
    answers both in the order its store and its check finish. The client ends in the
    state the worker is in."""
    conn, twin = client(), worker()
    conn.send_file(ev.FileToSend(META.name, META.size, META.sha256))
    check = one(deliver(conn.drain(), twin), ev.CheckStore)
    conn.send(SharedInputPath(INPUT) if which == "input" else SharedOutputPath(OUTPUT))
    action = deliver(conn.drain(), twin)[0]
    assert isinstance(action, ev.ValidateInput | ev.PrepareOutput)
    verdict: object = (
        (ev.InputAccepted() if which == "input" else ev.OutputAccepted())
        if accepted
        else ev.PathRefused(action, PathReason.PERMISSION_DENIED)
    )
    held = ev.StoreHas(check.transfer)
    replies = [
        tell(twin, outcome) for outcome in ((verdict, held) if check_first else (held, verdict))
    ]
    for outputs in replies:
        outcome = deliver(outputs, conn)
        assert not violations(outcome)
    assert conn.job == ClientJobState(twin.job, P.NONE)  # type: ignore[arg-type]


# ===================================================================== what a client answers


def test_a_client_answers_only_a_misplaced_chunk() -> None:
    conn = client()
    before = snapshot(conn)
    for frame, code in (
        ("JOB_START", ErrorCode.UNEXPECTED_MESSAGE),
        ("PATH_VALIDATED::input", ErrorCode.UNEXPECTED_MESSAGE),
        ("HELLO", ErrorCode.UNKNOWN_MESSAGE),
        ("JOB_LOG::a\nb", ErrorCode.MALFORMED_FRAME),
        ("FILE_READY::0", ErrorCode.UNEXPECTED_MESSAGE),
    ):
        outputs = feed(conn, frame)
        assert sends(outputs) == []  # the caller is told; the worker is not answered
        assert one(outputs, ev.Violation).code == code
    outputs = feed(conn, b"stray")
    assert sends(outputs) == [
        TransferError("UNEXPECTED_DATA", "can't handle Chunk in receiver state IDLE")
    ]
    assert snapshot(conn) == before


def test_a_client_has_no_worker_outcomes() -> None:
    conn = client()
    for outcome in (ev.InputAccepted(), ev.WorkerBusy("x"), ev.JobEnded(JOB)):
        with pytest.raises(LocalProtocolError) as info:
            conn.report(outcome)
        assert info.value.code == ErrorCode.INTERNAL_ERROR
        assert info.value.detail == f"a client has no outcome {type(outcome).__name__}"


# ===================================================================== what a client sends

CLIENT_MESSAGES: list[Message] = [
    JobId("run-2"),
    SharedInputPath("inputs/other.zip"),
    SharedOutputPath("outputs/other"),
    JobStart(),
    JobStart(legacy=True),
    JobCancel(),
    ResultsViaStorage(),
    ResultsRequest(JOB),
]


def twin_worker(state: ClientJobState) -> object:
    """The worker as it is when the client's next frame reaches it: in the client's view
    of its state, with the pending request received and not answered yet (a started job
    for JOB_START: the client bets its JOB_CANCEL on the job having started)."""
    conn = worker_in(state.worker)
    if state.pending is P.INPUT:
        feed(conn, SharedInputPath(INPUT))
    elif state.pending is P.OUTPUT:
        feed(conn, SharedOutputPath(OUTPUT))
    elif state.pending is P.START:
        one(feed(conn, JobStart()), ev.StartJob)
    return conn


@pytest.mark.parametrize("state", CLIENT_REACHABLE, ids=str)
@pytest.mark.parametrize("message", CLIENT_MESSAGES, ids=repr)
def test_the_client_cannot_send_what_the_worker_would_refuse(
    state: ClientJobState, message: Message
) -> None:
    conn = client_in(state)
    twin = twin_worker(state)
    before = snapshot(conn)
    try:
        conn.send(message)
    except LocalProtocolError as exc:
        assert exc.code == ErrorCode.UNEXPECTED_MESSAGE
        assert conn.drain() == [] and snapshot(conn) == before
        # Stricter than the worker only while it waits for an answer.
        would_refuse = violations(feed(twin, message))  # type: ignore[arg-type]
        assert would_refuse or state.pending is not P.NONE, (state, message)
        return
    (frame,) = frames(conn.drain())
    assert not violations(feed(twin, frame)), (state, message)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "message",
    [JobLog("x"), PathValidated("input"), META, Chunk(b"x"), ProtocolErrorFrame("X")],
    ids=repr,
)
def test_a_client_sends_no_worker_frames_and_no_transfer_frames_by_hand(message: Message) -> None:
    conn = client()
    with pytest.raises(LocalProtocolError) as info:
        conn.send(message)
    assert info.value.detail == f"a client may not send {message.TYPE} in state IDLE"
    assert conn.drain() == []


def test_chunk_size_comes_from_the_limits_and_file_meta_from_send_file() -> None:
    conn = client()
    conn.send_file(ev.FileToSend("a.bin", 3, SHA))
    assert sends(conn.drain()) == [FileMeta("a.bin", 3, SHA, conn.limits.chunk_bytes)]


# ===================================================================== pumped


def test_a_refused_input_reaches_the_client_as_a_delivered_path_error() -> None:
    world = SimulatedWorld(decide=lambda name, options: options[1])  # refuse what may be
    pair = ConnectionPair(world)
    pair.send(SharedInputPath(INPUT))
    assert [frame for _, frame in pair.frames] == [
        f"SHARED_INPUT_PATH::{INPUT}",
        f"PATH_ERROR::Input path does not exist: {INPUT}",
    ]
    assert pair.client.job == ClientJobState(S.IDLE, P.NONE) and pair.worker.job is S.IDLE
    assert [type(e) for e in pair.events] == [ev.Delivered]


def test_a_client_of_a_worker_without_storage() -> None:
    pair = ConnectionPair(capabilities=Capabilities(shared_storage=False, results_service=False))
    pair.send(SharedOutputPath(OUTPUT))
    pair.send(ResultsViaStorage())
    refused = [e for e in pair.events if isinstance(e, ev.Refused)]
    assert [(r.code, r.request) for r in refused] == [
        ("NO_SHARED_STORAGE", "output"),
        ("NO_STORAGE", "results_via_storage"),
    ]
    assert pair.client.job == ClientJobState(S.IDLE, P.NONE)
