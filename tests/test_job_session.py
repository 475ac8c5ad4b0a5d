"""The job-session state machine: every row of the table, and every pair outside it."""

from __future__ import annotations

import itertools

import pytest

from protocol import (
    ErrorCode,
    JobCancel,
    JobId,
    JobStart,
    LocalProtocolError,
    RemoteProtocolError,
    SharedInputPath,
    SharedOutputPath,
)
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

SAMPLE_EVENTS = {
    JobId: JobId("j1"),
    SharedInputPath: SharedInputPath("in.zip"),
    SharedOutputPath: SharedOutputPath("out"),
    JobStart: JobStart(),
    JobCancel: JobCancel(),
    InputAccepted: InputAccepted("in.zip"),
    FileAccepted: FileAccepted(".rtc-store/objects/ab/abc", "in.zip"),
    InputRejected: InputRejected(),
    OutputAccepted: OutputAccepted("out"),
    OutputRejected: OutputRejected(),
    JobFinished: JobFinished(),
}


def session_in(state: JobState) -> JobSession:
    """A session driven into ``state`` through the public API only."""
    session = JobSession(job_id_factory=lambda: "generated")
    if state is JobState.HAVE_FILE:
        session.report(FileAccepted("objects/ab/abc", "in.zip"))
    if state in (JobState.HAVE_INPUT, JobState.READY, JobState.RUNNING):
        session.receive(SharedInputPath("in.zip"))
        session.report(InputAccepted("in.zip"))
    if state in (JobState.HAVE_OUTPUT, JobState.READY, JobState.RUNNING):
        session.receive(SharedOutputPath("out"))
        session.report(OutputAccepted("out"))
    if state is JobState.RUNNING:
        session.receive(JobStart())
    assert session.state is state
    return session


def fire(session: JobSession, event: object) -> None:
    if isinstance(event, CLIENT_EVENTS):
        session.receive(event)
    else:
        session.report(event)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("state", "event_type"), sorted(TRANSITIONS, key=lambda k: (k[0], k[1].__name__))
)
def test_every_row_of_the_table(state: JobState, event_type: type) -> None:
    session = session_in(state)
    fire(session, SAMPLE_EVENTS[event_type])
    assert session.state is TRANSITIONS[(state, event_type)]


ALL_PAIRS = list(itertools.product(JobState, [*CLIENT_EVENTS, *INTERNAL_EVENTS]))
MISSING = [(s, e) for s, e in ALL_PAIRS if (s, e) not in TRANSITIONS]


@pytest.mark.parametrize(("state", "event_type"), MISSING)
def test_every_pair_outside_the_table_is_refused_and_changes_nothing(
    state: JobState, event_type: type
) -> None:
    session = session_in(state)
    before = (session.state, session.job_id, session.input_path, session.output_path)
    expected = RemoteProtocolError if event_type in CLIENT_EVENTS else LocalProtocolError
    with pytest.raises(expected) as info:
        fire(session, SAMPLE_EVENTS[event_type])
    assert type(info.value) is expected
    assert info.value.code == ErrorCode.UNEXPECTED_MESSAGE
    assert (session.state, session.job_id, session.input_path, session.output_path) == before


def test_the_table_covers_only_known_states_and_events() -> None:
    assert MISSING, "some pairs must be invalid (e.g. JOB_START while idle)"
    for state, event_type in TRANSITIONS:
        assert state in JobState
        assert event_type in SAMPLE_EVENTS


def test_actions_carry_the_client_values() -> None:
    session = JobSession(job_id_factory=lambda: "generated")
    assert session.receive(JobId("mine")) == SetJobId("mine")
    assert session.receive(SharedInputPath("a/in.zip")) == ValidateInput("a/in.zip")
    session.report(InputAccepted("a/in.zip"))
    assert session.receive(SharedOutputPath("b/out")) == PrepareOutput("b/out")
    session.report(OutputAccepted("b/out"))
    assert session.receive(JobStart(legacy=True)) == StartJob("mine", "a/in.zip", "b/out", False)
    assert session.receive(JobCancel()) == CancelJob("mine")
    session.report(JobFinished())
    assert (session.job_id, session.input_path, session.output_path) == (None, None, None)


def test_worker_makes_a_job_id_when_the_client_sends_none() -> None:
    session = session_in(JobState.READY)
    action = session.receive(JobStart())
    assert isinstance(action, StartJob)
    assert action.job_id == "generated"


def test_default_job_ids_follow_the_grammar_and_differ() -> None:
    from protocol import is_valid_job_id
    from protocol.job import new_job_id

    ids = {new_job_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(is_valid_job_id(job_id) for job_id in ids)


def test_a_rejected_input_forgets_the_earlier_one() -> None:
    session = session_in(JobState.READY)
    session.receive(SharedInputPath("other.zip"))
    session.report(InputRejected())
    assert session.state is JobState.HAVE_OUTPUT
    assert session.input_path is None
    with pytest.raises(RemoteProtocolError):
        session.receive(JobStart())


def test_second_job_on_the_same_session() -> None:
    session = session_in(JobState.RUNNING)
    session.report(JobFinished())
    assert session.state is JobState.IDLE
    with pytest.raises(RemoteProtocolError):
        session.receive(JobStart())  # paths must be sent again
    session.receive(SharedInputPath("in2.zip"))
    session.report(InputAccepted("in2.zip"))
    session.receive(SharedOutputPath("out2"))
    session.report(OutputAccepted("out2"))
    action = session.receive(JobStart())
    assert action == StartJob("generated", "in2.zip", "out2")


def test_a_received_file_is_an_input_that_needs_no_output_path() -> None:
    session = JobSession(job_id_factory=lambda: "generated")
    session.report(FileAccepted("objects/ab/abc", "package.zip"))
    assert session.state is JobState.HAVE_FILE
    assert session.receive(JobStart()) == StartJob("generated", "objects/ab/abc", None, True)


def test_a_shared_input_replaces_a_received_file_and_needs_an_output_again() -> None:
    session = JobSession(job_id_factory=lambda: "generated")
    session.report(FileAccepted("objects/ab/abc", "package.zip"))
    session.receive(SharedInputPath("in.zip"))
    session.report(InputAccepted("in.zip"))
    assert (session.state, session.input_received) == (JobState.HAVE_INPUT, False)
    with pytest.raises(RemoteProtocolError):
        session.receive(JobStart())


def test_a_received_file_with_a_shared_output() -> None:
    session = JobSession(job_id_factory=lambda: "generated")
    session.receive(SharedOutputPath("out"))
    session.report(OutputAccepted("out"))
    session.report(FileAccepted("objects/ab/abc", "package.zip"))
    assert session.state is JobState.READY
    assert session.receive(JobStart()) == StartJob("generated", "objects/ab/abc", "out", True)
