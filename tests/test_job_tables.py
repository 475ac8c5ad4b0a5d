"""The job session's tables: what they say, how the client's is derived from the
worker's, and every row of both taken by a real Connection (frames for messages,
reports and replies for outcomes)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from protocol import events as ev
from protocol.connection import Connection
from protocol.errors import ErrorCode, LocalProtocolError, PathReason
from protocol.job import (
    CLIENT_SENDS,
    CLIENT_TABLE,
    NOT_RUNNING,
    WORKER_TABLE,
    ClientJobState,
    JobKey,
    JobState,
    Outcome,
    Pending,
)
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
    ResultsViaStorage,
    SharedInputPath,
    SharedOutputPath,
)
from tests.protocol_helpers import (
    CLIENT_REACHABLE,
    INPUT,
    JOB,
    META,
    OUTPUT,
    SHA,
    client_in,
    feed,
    hold_file,
    one,
    say,
    tell,
    violations,
    worker_in,
)

S = JobState
WORKER_OUTCOMES = (
    Outcome.INPUT_ACCEPTED,
    Outcome.INPUT_REJECTED,
    Outcome.FILE_ACCEPTED,
    Outcome.OUTPUT_ACCEPTED,
    Outcome.OUTPUT_REJECTED,
    Outcome.JOB_FINISHED,
)


def has(state: JobState) -> tuple[bool, bool]:
    """(an input is set, an output is set) in a state that runs no job."""
    return {
        S.IDLE: (False, False),
        S.HAVE_INPUT: (True, False),
        S.HAVE_FILE: (True, False),
        S.HAVE_OUTPUT: (False, True),
        S.READY: (True, True),
    }[state]


# ===================================================================== the worker's table


def test_the_worker_table_holds_only_client_messages_and_outcomes() -> None:
    assert tuple(s for s in JobState if s is not S.RUNNING) == NOT_RUNNING
    for state, key in WORKER_TABLE:
        assert state in JobState
        assert key in CLIENT_SENDS or key in WORKER_OUTCOMES, key
    assert set(CLIENT_SENDS) == {
        JobId,
        SharedInputPath,
        SharedOutputPath,
        JobStart,
        JobCancel,
        ResultsViaStorage,
    }


def test_a_running_job_takes_only_its_cancel_its_results_and_its_end() -> None:
    running = {key: nxt for (s, key), nxt in WORKER_TABLE.items() if s is S.RUNNING}
    assert running == {
        JobCancel: S.RUNNING,
        ResultsViaStorage: S.RUNNING,
        Outcome.JOB_FINISHED: S.IDLE,
    }


def test_only_an_input_and_an_output_or_a_file_alone_start_a_job() -> None:
    starts = {s for (s, key), nxt in WORKER_TABLE.items() if key is JobStart}
    assert starts == {S.READY, S.HAVE_FILE}
    assert all(WORKER_TABLE[(s, JobStart)] is S.RUNNING for s in starts)
    assert not any(key is JobCancel for (s, key) in WORKER_TABLE if s is not S.RUNNING)


@pytest.mark.parametrize("state", NOT_RUNNING)
def test_frames_leave_the_state_and_outcomes_set_what_they_say(state: JobState) -> None:
    for message in (JobId, SharedInputPath, SharedOutputPath, ResultsViaStorage):
        assert WORKER_TABLE[(state, message)] is state  # a check's outcome moves it
    got_input, got_output = has(state)
    expected = {
        Outcome.INPUT_ACCEPTED: (True, got_output),
        Outcome.FILE_ACCEPTED: (True, got_output),
        Outcome.INPUT_REJECTED: (False, got_output),
        Outcome.OUTPUT_ACCEPTED: (got_input, True),
        Outcome.OUTPUT_REJECTED: (got_input, False),
    }
    for outcome, pair in expected.items():
        assert has(WORKER_TABLE[(state, outcome)]) == pair, (state, outcome)
    # a file alone is HAVE_FILE (it may start), a path alone HAVE_INPUT (it may not)
    if not got_output:
        assert WORKER_TABLE[(state, Outcome.FILE_ACCEPTED)] is S.HAVE_FILE
        assert WORKER_TABLE[(state, Outcome.INPUT_ACCEPTED)] is S.HAVE_INPUT


_CLIENT_MESSAGES: dict[type, Callable[[], object]] = {
    JobId: lambda: JobId("named"),
    SharedInputPath: lambda: SharedInputPath("inputs/other.zip"),
    SharedOutputPath: lambda: SharedOutputPath("outputs/other"),
    JobStart: JobStart,
    JobCancel: JobCancel,
    ResultsViaStorage: ResultsViaStorage,
}


def fire_worker(conn: Connection, key: JobKey) -> list[object]:
    """Take the row's event the way a worker meets it."""
    if key is Outcome.INPUT_ACCEPTED:
        feed(conn, SharedInputPath("inputs/other.zip"))
        return tell(conn, ev.InputAccepted())
    if key is Outcome.INPUT_REJECTED:
        action = one(feed(conn, SharedInputPath("../x")), ev.ValidateInput)
        return tell(conn, ev.PathRefused(action, PathReason.OUTSIDE_ROOT))
    if key is Outcome.OUTPUT_ACCEPTED:
        feed(conn, SharedOutputPath("outputs/other"))
        return tell(conn, ev.OutputAccepted())
    if key is Outcome.OUTPUT_REJECTED:
        action = one(feed(conn, SharedOutputPath("outputs/a-file")), ev.PrepareOutput)
        return tell(conn, ev.PathRefused(action, PathReason.NOT_A_DIRECTORY))
    if key is Outcome.FILE_ACCEPTED:
        return hold_file(conn)
    if key is Outcome.JOB_FINISHED:
        return tell(conn, ev.JobEnded(JOB, reason="cancelled"))
    assert isinstance(key, type)
    return feed(conn, _CLIENT_MESSAGES[key]())  # type: ignore[arg-type]


def row_id(row: tuple[object, object]) -> str:
    state, key = row
    return f"{state}-{getattr(key, '__name__', key)}"


@pytest.mark.parametrize("row", list(WORKER_TABLE), ids=row_id)
def test_every_row_of_the_worker_table(row: tuple[JobState, JobKey]) -> None:
    state, key = row
    conn = worker_in(state)
    outputs = fire_worker(conn, key)
    assert not violations(outputs)
    assert conn.job is WORKER_TABLE[row]


def test_a_file_received_while_a_job_runs_is_kept_but_not_the_next_input() -> None:
    assert (S.RUNNING, Outcome.FILE_ACCEPTED) not in WORKER_TABLE
    conn = worker_in(S.RUNNING)
    outputs = hold_file(conn)
    assert one(outputs, ev.FileHeld).sha256 == SHA
    assert "send it again to use it" in one(outputs, ev.Note).text
    assert conn.job is S.RUNNING
    assert conn.worker.input_sha256 is None  # type: ignore[union-attr]


@pytest.mark.parametrize("state", NOT_RUNNING)
def test_a_job_end_while_none_runs_is_an_adapter_bug(state: JobState) -> None:
    conn = worker_in(state)
    with pytest.raises(LocalProtocolError) as info:
        conn.report(ev.JobEnded(JOB, reason="cancelled"))
    assert info.value.code == ErrorCode.INTERNAL_ERROR
    assert conn.job is state


# ===================================================================== the client's table


def test_client_states_print_the_worker_state_and_the_pending_request() -> None:
    assert str(ClientJobState(S.IDLE, Pending.NONE)) == "IDLE"
    assert str(ClientJobState(S.READY, Pending.START)) == "READY (awaiting start)"
    assert str(ClientJobState(S.HAVE_FILE, Pending.INPUT)) == "HAVE_FILE (awaiting input)"


def test_the_client_sends_only_what_the_worker_takes_and_only_with_nothing_pending() -> None:
    for (state, key), nxt in CLIENT_TABLE.items():
        if key in CLIENT_SENDS and state.pending is Pending.NONE:
            assert (state.worker, key) in WORKER_TABLE, (state, key)
            assert nxt.worker is state.worker
        elif key in CLIENT_SENDS:  # only JOB_CANCEL, betting that the job started
            assert (key, state.pending) == (JobCancel, Pending.START)
            assert (WORKER_TABLE[(state.worker, JobStart)], key) in WORKER_TABLE


def test_each_reply_moves_the_client_as_its_outcome_moves_the_worker() -> None:
    waits = {
        Outcome.INPUT_ACCEPTED: Pending.INPUT,
        Outcome.INPUT_REJECTED: Pending.INPUT,
        Outcome.OUTPUT_ACCEPTED: Pending.OUTPUT,
        Outcome.OUTPUT_REJECTED: Pending.OUTPUT,
    }
    for (state, key), nxt in CLIENT_TABLE.items():
        if key in waits:
            assert state.pending is waits[key]
            assert nxt == ClientJobState(WORKER_TABLE[(state.worker, key)], Pending.NONE)
        elif key is Outcome.FILE_ACCEPTED:  # also while a path is checked: it stays pending
            assert state.pending in (Pending.NONE, Pending.INPUT, Pending.OUTPUT)
            assert nxt == ClientJobState(WORKER_TABLE[(state.worker, key)], state.pending)
        elif key is Outcome.START_REFUSED:
            assert nxt == ClientJobState(state.worker, Pending.NONE)
        elif key is Outcome.JOB_RUNNING:
            assert nxt == ClientJobState(S.RUNNING, Pending.NONE)
        elif key is Outcome.JOB_FINISHED:
            assert nxt == ClientJobState(S.IDLE, Pending.NONE)
    assert {key for _, key in CLIENT_TABLE} == set(CLIENT_SENDS) | set(Outcome)


#: The worker's frames that stand for each outcome on the client (PROTOCOL.md 4.1).
REPLIES: dict[Outcome, list[str]] = {
    Outcome.INPUT_ACCEPTED: ["PATH_VALIDATED::input"],
    Outcome.OUTPUT_ACCEPTED: ["PATH_VALIDATED::output"],
    Outcome.INPUT_REJECTED: [
        f"PATH_ERROR::Input path does not exist: {INPUT}",
        "PROTOCOL_ERROR::NO_SHARED_STORAGE::no shared storage",
        "PROTOCOL_ERROR::INTERNAL_ERROR::could not read it",
    ],
    Outcome.OUTPUT_REJECTED: [
        f"PATH_ERROR::Not a directory: {OUTPUT}",
        "PROTOCOL_ERROR::NO_SHARED_STORAGE::no shared storage",
    ],
    Outcome.START_REFUSED: ["PROTOCOL_ERROR::WORKER_BUSY::another job runs"],
    Outcome.JOB_RUNNING: [
        "JOB_LOG::epoch 1",
        'JOB_METRICS::{"validation_ms":1,"file_access_ms":1,"run_s":1,"total_s":1}',
        f"PATH_ERROR::File not found: {INPUT}",
    ],
    Outcome.JOB_FINISHED: [f"JOB_COMPLETE::{JOB}::{OUTPUT}::1::0.01", f"JOB_FAILED::{JOB}::oops"],
    Outcome.FILE_ACCEPTED: [f"FILE_EXISTS::{SHA}", f"FILE_RECEIVED::{SHA}"],
}


def client_rows() -> list[tuple[ClientJobState, JobKey, str | None]]:
    rows: list[tuple[ClientJobState, JobKey, str | None]] = []
    for state, key in CLIENT_TABLE:
        if isinstance(key, Outcome):
            rows += [(state, key, reply) for reply in REPLIES[key]]
        else:
            rows.append((state, key, None))
    return rows


@pytest.mark.parametrize(
    ("state", "key", "reply"),
    client_rows(),
    ids=[f"{s}-{getattr(k, '__name__', k)}-{r}"[:90] for s, k, r in client_rows()],
)
def test_every_row_of_the_client_table(
    state: ClientJobState, key: JobKey, reply: str | None
) -> None:
    conn = client_in(state)
    if reply is None:
        assert isinstance(key, type)
        outputs = say(conn, _CLIENT_MESSAGES[key]())  # type: ignore[arg-type]
    else:
        if key is Outcome.FILE_ACCEPTED:  # our upload ends with the worker's verdict
            conn.send_file(ev.FileToSend(META.name, META.size, META.sha256))
            conn.drain()
            if reply.startswith("FILE_RECEIVED"):
                feed(conn, "FILE_READY::0")
                conn.send_chunk(b"x")
                conn.end_of_file()
                conn.drain()
        outputs = feed(conn, reply)
    assert not violations(outputs), outputs
    assert conn.job == CLIENT_TABLE[(state, key)]
    if reply is not None and key is not Outcome.FILE_ACCEPTED:
        event = outputs[-1]
        assert isinstance(event, ev.Delivered | ev.Refused)


def test_replies_the_client_reads_by_their_field() -> None:
    # PATH_VALIDATED stands for the input or the output by its field.
    conn = client_in(ClientJobState(S.IDLE, Pending.INPUT))
    assert one(feed(conn, PathValidated("output")), ev.Violation).code == (
        ErrorCode.UNEXPECTED_MESSAGE
    )
    assert one(feed(conn, PathValidated("input")), ev.Delivered).message == PathValidated("input")
    for message in (JobLog("x"), JobMetrics(1, 1, 1, 1), JobComplete(JOB, "o", 1, 1.0)):
        assert violations(feed(conn, message))  # no job started
    assert conn.job == ClientJobState(S.HAVE_INPUT, Pending.NONE)
    # PATH_ERROR stands for the refusal of the pending path, else for a job that started
    # (its input vanished at use).
    conn = client_in(ClientJobState(S.READY, Pending.START))
    delivered = one(feed(conn, f"PATH_ERROR::File not found: {INPUT}"), ev.Delivered)
    assert isinstance(delivered.message, PathError)
    assert conn.job == ClientJobState(S.RUNNING, Pending.NONE)
    one(feed(conn, JobFailed(JOB, f"File not found: {INPUT}")), ev.Delivered)
    assert conn.job == ClientJobState(S.IDLE, Pending.NONE)


@pytest.mark.parametrize("state", CLIENT_REACHABLE, ids=str)
def test_every_reachable_client_state_is_reached_through_the_public_api(
    state: ClientJobState,
) -> None:
    assert client_in(state).job == state
