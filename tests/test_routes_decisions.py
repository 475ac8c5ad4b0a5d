"""Every (role, state, message type) triple of a Connection, against the decision table.

For both roles and all 34 message types, every state of the part the message routes to
(:func:`protocol.routes.states_of`) is reached with a real :class:`Connection` through
its public API only (``tests/protocol_helpers.py``); one valid frame of the type is fed,
and what happens is compared with :func:`protocol.routes.decision`: an allowed message
moves the part to the decided state with no Violation; a refused one is a Violation
with exactly the decided code (answered ``PROTOCOL_ERROR`` by a worker, and
``TRANSFER_ERROR::UNEXPECTED_DATA`` for a chunk in either role) and changes nothing.
States no peer can reach are listed in :data:`UNREACHABLE` with the reason, and a test
shows why. The guards (no shared storage, no storage service, busy) follow.
"""

from __future__ import annotations

import pytest

from protocol import events as ev
from protocol.auth_messages import AuthChallenge, AuthHello, AuthOk, AuthResponse
from protocol.codec import MESSAGE_TYPES, decode, encode
from protocol.errors import ErrorCode, LocalProtocolError, TransferErrorCode
from protocol.handshake import AuthFailed, AuthState
from protocol.job import CLIENT_TABLE, WORKER_TABLE, ClientJobState, JobState, Outcome, Pending
from protocol.messages import (
    JobCancel,
    JobComplete,
    JobFailed,
    JobId,
    JobLog,
    JobMetrics,
    JobStart,
    Message,
    PathError,
    PathValidated,
    ProtocolErrorFrame,
    ResultsRequest,
    ResultsStored,
    ResultsViaStorage,
    SharedInputPath,
    SharedOutputPath,
)
from protocol.relay_messages import RelayEnded, RelayPart, RelayStop
from protocol.routes import GUARDS, ROUTES, Guard, Part, Role, decision, states_of
from protocol.sender import SENDER_TABLE, SenderState
from protocol.transfer import RECEIVER_TABLE, ReceiverState
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
from tests.protocol_helpers import (
    BIG,
    BIG_SHA,
    CHALLENGE,
    CLIENT_REACHABLE,
    INPUT,
    JOB,
    OUTPUT,
    PEER,
    RELAY_CHUNK,
    SHA,
    auth_in,
    big_part,
    client,
    client_in,
    feed,
    hold_file,
    new,
    one,
    ready_at_zero,
    receiver_in,
    sender_in,
    sends,
    snapshot,
    tell,
    violations,
    worker,
    worker_in,
)

#: One valid frame of each type (PATH_VALIDATED names the pending request, see below).
SAMPLES: dict[type[Message], str | bytes] = {
    JobId: "JOB_ID::run-2",
    SharedInputPath: "SHARED_INPUT_PATH::inputs/other.zip",
    SharedOutputPath: "SHARED_OUTPUT_PATH::outputs/other",
    JobStart: "JOB_START",
    JobCancel: "JOB_CANCEL",
    ResultsRequest: f"RESULTS_REQUEST::{JOB}",
    ResultsViaStorage: "RESULTS_VIA_STORAGE",
    PathValidated: "PATH_VALIDATED::input",
    PathError: f"PATH_ERROR::Input path does not exist: {INPUT}",
    JobLog: "JOB_LOG::epoch 2",
    JobMetrics: 'JOB_METRICS::{"validation_ms":1.0,"file_access_ms":2.0,"run_s":3.0,"total_s":4.0}',
    JobComplete: f"JOB_COMPLETE::{JOB}::{OUTPUT}::1::0.01",
    JobFailed: f"JOB_FAILED::{JOB}::cancelled",
    ResultsStored: f"RESULTS_STORED::{JOB}::/download/{JOB}",
    ProtocolErrorFrame: "PROTOCOL_ERROR::INTERNAL_ERROR::something broke",
    FileMeta: f"FILE_META::other.bin::11::{SHA}::4",
    FileMetaLegacy: "FILE_META::notes.txt:11:gui-1",
    FileProofRequest: f"FILE_PROOF_REQUEST::{CHALLENGE.nonce}::0+4,7+4",
    FileProof: f"FILE_PROOF::{SHA}",
    FileReady: "FILE_READY::0",
    FileExists: f"FILE_EXISTS::{SHA}",
    Chunk: b"h",
    FileProgress: "FILE_PROGRESS::4::11",
    EndOfFile: "END_OF_FILE",
    FileReceived: f"FILE_RECEIVED::{SHA}",
    TransferError: "TRANSFER_ERROR::CANCELLED::no transfer open",
    FileCancel: "FILE_CANCEL",
    # The relay frames are about BIG_META (see receiver_in's relay; sample() below).
    RelayPart: encode(big_part(0, RELAY_CHUNK)),
    RelayStop: f"RELAY_STOP::{BIG_SHA}",
    RelayEnded: f"RELAY_ENDED::{SHA}::0::RELAY_GONE::",
    # Valid frames whose keys and signatures prove nothing: a check fails (see below).
    AuthHello: encode(AuthHello(bytes(32), bytes(range(32)))),
    AuthChallenge: encode(AuthChallenge(bytes(32), bytes(32), bytes(64))),
    AuthResponse: encode(AuthResponse(bytes(64))),
    AuthOk: encode(AuthOk("0" * 64)),
}


def sample(message: type[Message], state: object) -> str | bytes:
    """The frame fed: PATH_VALIDATED answers the path the client waits for."""
    if (
        message is PathValidated
        and isinstance(state, ClientJobState)
        and state.pending in (Pending.INPUT, Pending.OUTPUT)
    ):
        return f"PATH_VALIDATED::{state.pending.value}"
    if message is RelayPart and state in (ReceiverState.RELAYING, ReceiverState.HALTING):
        return encode(big_part(RELAY_CHUNK, len(BIG) - RELAY_CHUNK))  # the next part
    return SAMPLES[message]


#: (role, part, state) a peer cannot reach, and why (see the tests below).
UNREACHABLE: dict[tuple[Role, Part, object], str] = {
    **{
        (Role.CLIENT, Part.JOB, state): (
            "the client sends JOB_START only where the worker's table takes it (READY, "
            "HAVE_FILE), and sends nothing the worker refuses while a job runs"
        )
        for state in states_of(Role.CLIENT, Part.JOB)
        if state not in CLIENT_REACHABLE
    },
    **{
        (Role.WORKER, part, ReceiverState.REQUESTED): (
            "only a client sends RESULTS_REQUEST, so only a client's receiver waits for one"
        )
        for part in (Part.RECEIVER, Part.CANCEL)
    },
    (Role.CLIENT, Part.SENDER, SenderState.PREPARING): (
        "only a worker prepares results: a client refuses RESULTS_REQUEST"
    ),
    **{
        (Role.CLIENT, part, ReceiverState.PROVING): (
            "only a worker asks a proof of possession: its store is shared by principals"
        )
        for part in (Part.RECEIVER, Part.CANCEL)
    },
    **{
        (Role.WORKER, Part.HANDSHAKE, state): "only a client sends AUTH_HELLO and AUTH_RESPONSE"
        for state in (AuthState.HELLO_SENT, AuthState.RESPONDED)
    },
    (Role.CLIENT, Part.HANDSHAKE, AuthState.CHALLENGED): "only a worker sends AUTH_CHALLENGE",
    **{
        (Role.WORKER, part, state): (
            "a worker sends its results on the channel: it never announces the relay road"
        )
        for part in (Part.SENDER, Part.RESULTS)
        for state in (SenderState.RELAYING, SenderState.RELAY_STOPPING)
    },
}

TRIPLES = [
    (role, message, state)
    for role in Role
    for message in MESSAGE_TYPES
    for state in states_of(role, ROUTES[role][message])
]
REACHED = [t for t in TRIPLES if (t[0], ROUTES[t[0]][t[1]], t[2]) not in UNREACHABLE]


def drive(role: Role, message: type[Message], state: object) -> object:
    """A connection in which the part handling ``message`` is in ``state``."""
    part = ROUTES[role][message]
    if part in (Part.REFUSED, Part.PEER_ERROR):
        assert state == "any"
        return new(role)
    if part is Part.JOB:
        assert isinstance(state, JobState | ClientJobState)
        return worker_in(state) if isinstance(state, JobState) else client_in(state)
    if part is Part.HANDSHAKE:
        assert isinstance(state, AuthState)
        return auth_in(role, state)
    if part in (Part.RECEIVER, Part.CANCEL):
        assert isinstance(state, ReceiverState)
        # END_OF_FILE is taken in IDLE right after a legacy transfer, and in RECEIVING
        # when every byte is there (else SIZE_MISMATCH): drive those states that way.
        full = message is EndOfFile and state in (ReceiverState.IDLE, ReceiverState.RECEIVING)
        relay = message in (RelayPart, RelayStop)  # a RECEIVING that a relay part continues
        return receiver_in(role, state, full=full, relay=relay)
    assert isinstance(state, SenderState)
    return sender_in(role, state)


def observed(conn: object, part: Part) -> str:
    if part is Part.JOB:
        return str(conn.job)  # type: ignore[attr-defined]
    if part is Part.HANDSHAKE:
        return conn.handshake.state.value  # type: ignore[attr-defined]
    if part in (Part.RECEIVER, Part.CANCEL):
        return conn.receiver.state.value  # type: ignore[attr-defined]
    return conn.sender.state.value  # type: ignore[attr-defined]


def ident(triple: tuple[Role, type[Message], object]) -> str:
    role, message, state = triple
    return f"{role.value}-{message.__name__}-{state}"


def test_the_triples_are_every_role_message_and_state() -> None:
    assert len(MESSAGE_TYPES) == 34
    for role in Role:
        assert set(ROUTES[role]) == set(MESSAGE_TYPES)
    expected = sum(
        len(states_of(role, ROUTES[role][message])) for role in Role for message in MESSAGE_TYPES
    )
    assert len(TRIPLES) == expected
    skipped = {(r, ROUTES[r][m], s) for r, m, s in TRIPLES} - {
        (r, ROUTES[r][m], s) for r, m, s in REACHED
    }
    assert skipped == set(UNREACHABLE)


@pytest.mark.parametrize("triple", REACHED, ids=ident)
def test_every_triple_behaves_as_decided(triple: tuple[Role, type[Message], object]) -> None:
    role, message, state = triple
    part = ROUTES[role][message]
    conn = drive(role, message, state)
    before = snapshot(conn)  # type: ignore[arg-type]
    was = observed(conn, part)
    frame = sample(message, state)
    assert type(decode(frame)) is message
    outputs = feed(conn, frame)  # type: ignore[arg-type]
    allowed, result = decision(role, message, state)
    if allowed:
        assert not violations(outputs), outputs
        if part is Part.PEER_ERROR:
            assert not sends(outputs)
            if role is Role.WORKER:
                assert "peer reports INTERNAL_ERROR" in one(outputs, ev.Note).text
            else:
                assert one(outputs, ev.Refused).code == ErrorCode.INTERNAL_ERROR
            assert snapshot(conn) == before  # type: ignore[arg-type]
            return
        shown = result.split(";")[0]
        if shown == "checked":  # the sample's key or signature proves nothing
            assert observed(conn, part) == AuthState.FAILED.value
            assert one(outputs, AuthFailed).code
            return
        assert observed(conn, part) == (was if shown == "unchanged" else shown)
        return
    (violation,) = violations(outputs)
    assert violation.code == result
    assert violation.detail
    if message is Chunk:
        refusal = TransferError(TransferErrorCode.UNEXPECTED_DATA, violation.detail)
        assert sends(outputs) == [refusal]
    elif role is Role.WORKER:
        assert sends(outputs) == [ProtocolErrorFrame(result, violation.detail)]
    else:
        assert sends(outputs) == []  # a client tells its caller, never the worker
    assert snapshot(conn) == before  # type: ignore[arg-type]


# ===================================================================== unreachable states


def reachable_client_states() -> set[ClientJobState]:
    start = ClientJobState(JobState.IDLE, Pending.NONE)
    seen, todo = {start}, [start]
    while todo:
        state = todo.pop()
        for (src, _), nxt in CLIENT_TABLE.items():
            if src == state and nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_unreachable_client_states_are_those_its_table_never_enters() -> None:
    assert reachable_client_states() == set(CLIENT_REACHABLE)
    unreachable = set(states_of(Role.CLIENT, Part.JOB)) - set(CLIENT_REACHABLE)
    assert unreachable == {
        ClientJobState(s, Pending.START)
        for s in (JobState.IDLE, JobState.HAVE_INPUT, JobState.HAVE_OUTPUT, JobState.RUNNING)
    } | {ClientJobState(JobState.RUNNING, p) for p in (Pending.INPUT, Pending.OUTPUT)}
    for state in unreachable:  # no row leads there, and none starts there
        assert not any(src == state or nxt == state for (src, _), nxt in CLIENT_TABLE.items())


def test_a_workers_receiver_never_waits_for_requested_results() -> None:
    # The only way into REQUESTED is our own RESULTS_REQUEST...
    assert [key for key, nxt in RECEIVER_TABLE.items() if nxt is ReceiverState.REQUESTED] == [
        (ReceiverState.IDLE, ResultsRequest)
    ]
    conn = worker()
    with pytest.raises(LocalProtocolError) as info:
        conn.send(ResultsRequest(JOB))  # ...which a worker does not send
    assert info.value.code == ErrorCode.UNEXPECTED_MESSAGE
    # and a client's RESULTS_REQUEST goes to the worker's sender, not its receiver.
    assert ROUTES[Role.WORKER][ResultsRequest] is Part.RESULTS
    one(feed(conn, ResultsRequest(JOB)), ev.LookupResults)
    assert (conn.receiver.state, conn.sender.state) == (ReceiverState.IDLE, SenderState.PREPARING)


def test_a_clients_sender_never_prepares_results() -> None:
    assert [key for key, nxt in SENDER_TABLE.items() if nxt is SenderState.PREPARING] == [
        (SenderState.IDLE, ResultsRequest),
        (SenderState.PREPARING, ev.ResultsFound),
    ]
    conn = client()
    (violation,) = violations(feed(conn, ResultsRequest(JOB)))
    assert violation.code == ErrorCode.UNEXPECTED_MESSAGE
    with pytest.raises(LocalProtocolError):
        conn.report(ev.ResultsFound(JOB, PEER, False, OUTPUT))
    conn.send(ResultsRequest(JOB))  # our own request waits on the receiver
    assert (conn.receiver.state, conn.sender.state) == (ReceiverState.REQUESTED, SenderState.IDLE)


def test_a_clients_receiver_never_asks_a_proof() -> None:
    # Its store is its own: FILE_READY (or FILE_EXISTS) answers the worker at once.
    conn = client()
    assert conn.receiver.prove_possession is False and worker().receiver.prove_possession
    serial = one(feed(conn, SAMPLES[FileMeta]), ev.CheckStore).transfer
    assert sends(tell(conn, ev.StoreOffset(serial, 0))) == [decode("FILE_READY::0")]
    assert conn.receiver.state is ReceiverState.RECEIVING


def test_end_of_file_in_a_fresh_idle_receiver_is_refused() -> None:
    # The IDLE row of END_OF_FILE holds only right after a completed legacy transfer
    # (PROTOCOL.md 4.4); the triples above reach IDLE that way.
    for role in Role:
        conn = new(role)
        outputs = feed(conn, "END_OF_FILE")
        (violation,) = violations(outputs)
        assert violation == ev.Violation(
            ErrorCode.UNEXPECTED_MESSAGE, "END_OF_FILE without an open transfer"
        )
        done = receiver_in(role, ReceiverState.IDLE, full=True)
        assert feed(done, "END_OF_FILE") == []
        assert violations(feed(done, "END_OF_FILE"))  # only once


# ===================================================================== FILE_CANCEL with a send


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize(
    "state", [SenderState.AWAIT_READY, SenderState.SENDING, SenderState.AWAIT_RECEIVED]
)
def test_file_cancel_goes_to_an_open_send_when_nothing_is_received(
    role: Role, state: SenderState
) -> None:
    conn = sender_in(role, state)
    outputs = feed(conn, "FILE_CANCEL")
    assert SENDER_TABLE[(state, FileCancel)] is SenderState.IDLE
    assert conn.sender.state is SenderState.IDLE
    assert one(outputs, ev.SendEnded).status == "cancelled"
    assert sends(outputs) == []  # the receiver's cancel is not acknowledged
    assert not violations(outputs)


def test_file_cancel_while_results_are_prepared_is_refused() -> None:
    conn = sender_in(Role.WORKER, SenderState.PREPARING)
    before = snapshot(conn)
    outputs = feed(conn, "FILE_CANCEL")
    assert one(outputs, ev.Violation).code == ErrorCode.UNEXPECTED_MESSAGE
    assert sends(outputs)[0].code == ErrorCode.UNEXPECTED_MESSAGE  # type: ignore[attr-defined]
    assert snapshot(conn) == before


@pytest.mark.parametrize("role", list(Role))
def test_file_cancel_after_our_cancel_is_acknowledged_by_the_receiver(role: Role) -> None:
    # Our sender is CANCELLED (not active): a FILE_CANCEL goes to our idle receiver,
    # which acknowledges it; our sender keeps waiting for its own acknowledgement.
    conn = sender_in(role, SenderState.CANCELLED)
    outputs = feed(conn, "FILE_CANCEL")
    assert sends(outputs) == [TransferError(TransferErrorCode.CANCELLED, "no transfer open")]
    assert conn.sender.state is SenderState.CANCELLED
    assert feed(conn, "TRANSFER_ERROR::CANCELLED::no transfer open") == []
    assert conn.sender.state is SenderState.IDLE


def test_file_cancel_goes_to_an_open_receive_even_with_a_send_open() -> None:
    conn = sender_in(Role.WORKER, SenderState.SENDING)
    serial = one(feed(conn, f"FILE_META::in.bin::11::{SHA}::4"), ev.CheckStore).transfer
    ready_at_zero(conn, serial)
    outputs = feed(conn, "FILE_CANCEL")
    assert one(outputs, ev.Discard) == ev.Discard(serial, keep=True)
    assert conn.receiver.state is ReceiverState.IDLE
    assert conn.sender.state is SenderState.SENDING


# ===================================================================== guards


def test_every_guard_is_named_with_its_code() -> None:
    assert {message: guard for message, (guard, _) in GUARDS.items()} == {
        SharedInputPath: Guard.NO_SHARED_STORAGE,
        SharedOutputPath: Guard.NO_SHARED_STORAGE,
        ResultsViaStorage: Guard.NO_RESULTS_SERVICE,
        JobStart: Guard.BUSY,
    }
    for message, (guard, code) in GUARDS.items():
        for state in JobState:
            allowed, result = decision(Role.WORKER, message, state)
            if allowed:
                assert result.endswith(f"; {code} if {guard}")


#: The states a worker without shared storage reaches (a held file, its job).
NO_SHARED_STATES = (JobState.IDLE, JobState.HAVE_FILE, JobState.RUNNING)


def no_shared_worker_in(state: JobState) -> object:
    conn = worker(shared_storage=False)
    if state is not JobState.IDLE:
        hold_file(conn)
    if state is JobState.RUNNING:
        one(feed(conn, JobStart()), ev.StartJob)
    assert conn.job is state
    return conn


@pytest.mark.parametrize("path", [SharedInputPath(INPUT), SharedOutputPath(OUTPUT)])
@pytest.mark.parametrize("state", NO_SHARED_STATES)
def test_no_shared_storage_refuses_a_path(state: JobState, path: Message) -> None:
    conn = no_shared_worker_in(state)
    outputs = feed(conn, path)  # type: ignore[arg-type]
    if (state, type(path)) not in WORKER_TABLE:  # the table refuses first
        assert one(outputs, ev.Violation).code == ErrorCode.UNEXPECTED_MESSAGE
        assert conn.job is state
        return
    assert not violations(outputs)
    assert not of_actions(outputs)
    (refusal,) = sends(outputs)
    assert refusal == ProtocolErrorFrame(
        ErrorCode.NO_SHARED_STORAGE, "this worker has no shared storage configured"
    )
    # A refused path forgets the earlier one, as a refused check would: an input
    # path forgets the held file.
    outcome = (
        Outcome.INPUT_REJECTED if isinstance(path, SharedInputPath) else (Outcome.OUTPUT_REJECTED)
    )
    assert conn.job is WORKER_TABLE[(state, outcome)]
    if isinstance(path, SharedInputPath) and state is JobState.HAVE_FILE:
        assert conn.worker.input_sha256 is None  # type: ignore[attr-defined]
        assert one(feed(conn, JobStart()), ev.Violation).code == ErrorCode.UNEXPECTED_MESSAGE


def of_actions(outputs: list[object]) -> list[object]:
    return [o for o in outputs if isinstance(o, ev.ValidateInput | ev.PrepareOutput)]


@pytest.mark.parametrize("state", list(JobState))
def test_no_storage_service_refuses_results_via_storage(state: JobState) -> None:
    conn = worker_in(state, worker(results_service=False))
    before = snapshot(conn)
    outputs = feed(conn, ResultsViaStorage())
    assert sends(outputs) == [
        ProtocolErrorFrame(ErrorCode.NO_STORAGE, "this worker has no storage service configured")
    ]
    assert not violations(outputs)
    assert snapshot(conn) == before  # via_storage stays False
    assert conn.worker.via_storage is False  # type: ignore[union-attr]


@pytest.mark.parametrize("state", [JobState.READY, JobState.HAVE_FILE])
def test_a_busy_worker_refuses_job_start_and_keeps_the_paths(state: JobState) -> None:
    conn = worker_in(state)
    tell(conn, ev.WorkerBusy("another job (job-aaaaaaaaaaaa) is running on this worker"))
    before = snapshot(conn)
    outputs = feed(conn, JobStart())
    assert sends(outputs) == [
        ProtocolErrorFrame(
            ErrorCode.WORKER_BUSY, "another job (job-aaaaaaaaaaaa) is running on this worker"
        )
    ]
    assert not violations(outputs)
    assert snapshot(conn) == before
    tell(conn, ev.WorkerIdle())
    start = one(feed(conn, JobStart()), ev.StartJob)
    assert conn.job is JobState.RUNNING
    assert start.job_id == JOB


def test_a_guard_refusal_is_no_violation_but_the_table_refusal_is() -> None:
    busy = worker_in(JobState.IDLE)
    tell(busy, ev.WorkerBusy("stopping"))
    outputs = feed(busy, JobStart())  # IDLE: the table refuses before the guard
    assert one(outputs, ev.Violation) == ev.Violation(
        ErrorCode.UNEXPECTED_MESSAGE, "can't handle JOB_START in state IDLE"
    )
