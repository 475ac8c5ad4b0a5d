"""A worker Connection's jobs, paths, results and their roads, by hand (frames in,
outputs read, outcomes reported) and pumped against a client (ConnectionPair). The
frames are those of PROTOCOL.md's worked exchanges (section 6)."""

from __future__ import annotations

import re

import pytest

from protocol import events as ev
from protocol.connection import new_job_id
from protocol.errors import ErrorCode, LocalProtocolError, PathReason
from protocol.job import JobState
from protocol.messages import (
    JobComplete,
    JobFailed,
    JobLog,
    JobMetrics,
    JobStart,
    PathError,
    PathValidated,
    ProtocolErrorFrame,
    ResultsStored,
    SharedInputPath,
    SharedOutputPath,
)
from protocol.routes import Role
from protocol.sender import SenderState
from protocol.testing import ConnectionPair, SimulatedWorld
from protocol.transfer import ReceiverState
from tests.protocol_helpers import (
    INPUT,
    JOB,
    META,
    OUTPUT,
    PEER,
    SHA,
    feed,
    frames,
    hold_file,
    one,
    receiver_in,
    sender_in,
    sends,
    sha256,
    snapshot,
    tell,
    violations,
    worker,
    worker_in,
)

METRICS = JobMetrics(0.935, 1.053, 0.01, 0.012)


def complete(job_id: str, output: str = OUTPUT) -> ev.JobEnded:
    return ev.JobEnded(job_id, JobComplete(job_id, output, 1, 0.0), METRICS)


# ===================================================================== a shared job


def test_a_shared_job_by_hand() -> None:  # PROTOCOL.md 6.1
    conn = worker()
    assert feed(conn, "JOB_ID::run-7") == []
    assert feed(conn, f"SHARED_INPUT_PATH::{INPUT}") == [ev.ValidateInput(INPUT)]
    assert frames(tell(conn, ev.InputAccepted(0.9, 1.053))) == ["PATH_VALIDATED::input"]
    assert feed(conn, "SHARED_OUTPUT_PATH::outputs/run-7") == [ev.PrepareOutput("outputs/run-7")]
    assert frames(tell(conn, ev.OutputAccepted(0.035))) == ["PATH_VALIDATED::output"]
    assert conn.job is JobState.READY
    start = one(feed(conn, "JOB_START"), ev.StartJob)
    assert start == ev.StartJob("run-7", INPUT, None, None, "outputs/run-7", 0.935, 1.053)
    assert conn.job is JobState.RUNNING
    assert conn.send_log("manifest: 3 file(s) from inputs/train.zip") is True
    conn.send(JobLog("wrote manifest.json"))
    assert frames(conn.drain()) == [
        "JOB_LOG::manifest: 3 file(s) from inputs/train.zip",
        "JOB_LOG::wrote manifest.json",
    ]
    outputs = tell(conn, complete("run-7", "outputs/run-7"))
    assert frames(outputs) == [
        'JOB_METRICS::{"validation_ms":0.935,"file_access_ms":1.053,"run_s":0.01,"total_s":0.012}',
        "JOB_COMPLETE::run-7::outputs/run-7::1::0.00",
    ]
    assert not any(isinstance(o, ev.UploadResults) for o in outputs)  # not asked for
    # The session is IDLE again and has forgotten the job, its input and its output.
    assert conn.job is JobState.IDLE
    side = conn.worker
    assert side is not None
    assert (side.job_id, side.input_path, side.output_path, side.running) == (None,) * 4
    assert (side.validation_ms, side.file_access_ms) == (0.0, 0.0)
    assert conn.send_log("late") is False
    assert conn.drain() == []
    assert one(feed(conn, "JOB_START"), ev.Violation).code == ErrorCode.UNEXPECTED_MESSAGE


def test_the_worker_names_a_job_the_client_did_not_name() -> None:
    conn = worker_in(JobState.READY)
    start = one(feed(conn, "SHARED_STORAGE_JOB::start"), ev.StartJob)  # the legacy start
    assert start.job_id == JOB
    tell(conn, ev.JobEnded(JOB, reason="Job command exited with code 2"))
    ids = {new_job_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"job-[0-9a-f]{12}", job_id) for job_id in ids)


def test_the_last_job_id_before_the_start_wins_and_is_forgotten_after() -> None:
    conn = worker()
    feed(conn, "JOB_ID::first")
    worker_in(JobState.READY, conn)
    feed(conn, "JOB_ID::second")
    assert one(feed(conn, "JOB_START"), ev.StartJob).job_id == "second"
    tell(conn, ev.JobEnded("second", reason="cancelled"))
    worker_in(JobState.READY, conn)
    assert one(feed(conn, "JOB_START"), ev.StartJob).job_id == JOB


def test_a_job_id_while_a_job_runs_is_refused() -> None:
    conn = worker_in(JobState.RUNNING)
    before = snapshot(conn)
    outputs = feed(conn, "JOB_ID::other")
    assert sends(outputs) == [
        ProtocolErrorFrame("UNEXPECTED_MESSAGE", "can't handle JOB_ID in state RUNNING")
    ]
    assert snapshot(conn) == before


def test_a_second_job_start_while_one_runs_is_refused() -> None:  # PROTOCOL.md 6.6
    conn = worker_in(JobState.RUNNING)
    assert frames(feed(conn, "JOB_START")) == [
        "PROTOCOL_ERROR::UNEXPECTED_MESSAGE::can't handle JOB_START in state RUNNING"
    ]
    assert one(feed(conn, "JOB_CANCEL"), ev.CancelJob) == ev.CancelJob(JOB)
    assert conn.job is JobState.RUNNING  # until the job has ended
    assert frames(tell(conn, ev.JobEnded(JOB, reason="cancelled"))) == [
        f"JOB_FAILED::{JOB}::cancelled"
    ]
    assert conn.job is JobState.IDLE


def test_a_completed_job_without_metrics_is_only_its_completion() -> None:
    conn = worker_in(JobState.RUNNING)
    done = JobComplete(JOB, OUTPUT, 0, 0.0)
    assert sends(tell(conn, ev.JobEnded(JOB, done))) == [done]


def test_a_failed_job_without_a_reason_says_failed() -> None:
    conn = worker_in(JobState.RUNNING)
    assert sends(tell(conn, ev.JobEnded(JOB))) == [JobFailed(JOB, "failed")]


@pytest.mark.parametrize("reason", [PathReason.VANISHED, PathReason.OUTSIDE_ROOT])
def test_an_input_refused_at_use_is_a_path_error_then_the_failure(reason: PathReason) -> None:
    conn = worker_in(JobState.RUNNING)
    assert sends(tell(conn, ev.JobEnded(JOB, path_error=reason))) == [
        PathError(f"{reason.value}: {INPUT}"),  # quoting the input as the client sent it
        JobFailed(JOB, f"{reason.value}: {INPUT}"),
    ]
    # A received file is quoted by the name its sender gave it.
    conn = worker_in(JobState.HAVE_FILE)
    one(feed(conn, "JOB_START"), ev.StartJob)
    assert sends(tell(conn, ev.JobEnded(JOB, path_error=PathReason.VANISHED))) == [
        PathError(f"File not found: {META.name}"),
        JobFailed(JOB, f"File not found: {META.name}"),
    ]


# ===================================================================== paths


@pytest.mark.parametrize(
    ("frame", "reason", "left"),
    [
        ("SHARED_INPUT_PATH::../etc/passwd", PathReason.OUTSIDE_ROOT, JobState.HAVE_OUTPUT),
        ("SHARED_INPUT_PATH::inputs/missing.zip", PathReason.NOT_FOUND, JobState.HAVE_OUTPUT),
        ("SHARED_OUTPUT_PATH::outputs/report.txt", PathReason.NOT_A_DIRECTORY, JobState.HAVE_INPUT),
        ("SHARED_OUTPUT_PATH::.", PathReason.PERMISSION_DENIED, JobState.HAVE_INPUT),
    ],
)
def test_a_refused_path_is_quoted_as_sent_and_forgets_the_earlier_one(
    frame: str, reason: PathReason, left: JobState
) -> None:  # PROTOCOL.md 6.7
    conn = worker_in(JobState.READY)
    action = feed(conn, frame)[0]
    assert isinstance(action, ev.ValidateInput | ev.PrepareOutput)
    path = frame.partition("::")[2]
    assert action.path == path
    assert sends(tell(conn, ev.PathRefused(action, reason))) == [PathError.of(reason, path)]
    assert conn.job is left
    side = conn.worker
    assert side is not None
    assert (side.input_path, side.output_path) == (
        (None, OUTPUT) if left is JobState.HAVE_OUTPUT else (INPUT, None)
    )
    assert one(feed(conn, "JOB_START"), ev.Violation).code == ErrorCode.UNEXPECTED_MESSAGE


def test_a_check_that_fails_is_an_internal_error_and_forgets_the_path() -> None:
    conn = worker_in(JobState.READY)
    action = one(feed(conn, SharedOutputPath("outputs/x")), ev.PrepareOutput)
    outputs = tell(conn, ev.ActionFailed(action, "could not create the folder"))
    assert sends(outputs) == [ProtocolErrorFrame("INTERNAL_ERROR", "could not create the folder")]
    assert not violations(outputs)
    assert conn.job is JobState.HAVE_INPUT


def test_a_new_path_replaces_the_earlier_one_and_the_timings_add_up() -> None:
    conn = worker_in(JobState.READY)  # 1.0 + 3.0 ms of validation, 2.0 of file access
    feed(conn, SharedInputPath("inputs/b.zip"))
    tell(conn, ev.InputAccepted(0.5, 0.25))
    start = one(feed(conn, JobStart()), ev.StartJob)
    assert (start.input_path, start.output_path) == ("inputs/b.zip", OUTPUT)
    assert (start.validation_ms, start.file_access_ms) == (4.5, 2.25)


@pytest.mark.parametrize(
    ("pending", "wrong"),
    [
        (SharedInputPath(INPUT), ev.OutputAccepted()),
        (SharedOutputPath(OUTPUT), ev.InputAccepted()),
    ],
)
def test_a_report_that_answers_no_pending_check_is_an_adapter_bug(
    pending: object, wrong: object
) -> None:
    conn = worker()
    with pytest.raises(LocalProtocolError) as info:
        conn.report(ev.InputAccepted())  # nothing was asked
    assert info.value.code == ErrorCode.INTERNAL_ERROR
    action = feed(conn, pending)[0]  # type: ignore[arg-type]
    before = snapshot(conn)
    with pytest.raises(LocalProtocolError):
        conn.report(wrong)
    assert snapshot(conn) == before
    if isinstance(action, ev.ValidateInput):
        assert sends(tell(conn, ev.InputAccepted())) == [PathValidated("input")]
    else:
        assert sends(tell(conn, ev.OutputAccepted())) == [PathValidated("output")]


@pytest.mark.parametrize(
    "action", [ev.ValidateInput(INPUT), ev.PrepareOutput(OUTPUT)], ids=["input", "output"]
)
def test_a_failed_check_that_is_not_pending_is_an_adapter_bug(action: object) -> None:
    conn = worker_in(JobState.READY)
    before = snapshot(conn)
    with pytest.raises(LocalProtocolError) as info:
        conn.report(ev.ActionFailed(action, "could not read it"))  # type: ignore[arg-type]
    assert info.value.code == ErrorCode.INTERNAL_ERROR
    assert conn.drain() == [] and snapshot(conn) == before
    other = (
        SharedOutputPath(OUTPUT)
        if isinstance(action, ev.ValidateInput)
        else (SharedInputPath(INPUT))
    )
    pending = feed(conn, other)[0]  # another check is pending: still not this one
    with pytest.raises(LocalProtocolError):
        conn.report(ev.ActionFailed(action, "could not read it"))  # type: ignore[arg-type]
    outputs = tell(conn, ev.ActionFailed(pending, "could not read it"))  # type: ignore[arg-type]
    assert sends(outputs) == [ProtocolErrorFrame("INTERNAL_ERROR", "could not read it")]


def test_a_check_reported_after_the_job_started_is_refused() -> None:
    """An adapter reports a path check before it takes the next frame. A worker that
    took JOB_START meanwhile (from a client that did not wait for PATH_VALIDATED) ran the
    job with the paths checked before, and the late report is refused."""
    conn = worker_in(JobState.READY)
    feed(conn, SharedInputPath("inputs/new.zip"))
    start = one(feed(conn, JobStart()), ev.StartJob)
    assert start.input_path == INPUT  # the input checked earlier
    with pytest.raises(LocalProtocolError) as info:
        conn.report(ev.InputAccepted())
    assert info.value.detail == "can't handle input accepted in state RUNNING"
    assert conn.job is JobState.RUNNING and conn.drain() == []


def test_an_outcome_a_worker_does_not_have_is_an_adapter_bug() -> None:
    conn = worker()
    with pytest.raises(LocalProtocolError) as info:
        conn.report(object())
    assert (info.value.code, info.value.detail) == (
        ErrorCode.INTERNAL_ERROR,
        "a worker has no outcome object",
    )


# ===================================================================== a received file


def test_a_received_file_is_an_input_that_needs_no_output() -> None:
    conn = worker()
    held = one(hold_file(conn), ev.FileHeld)
    assert held == ev.FileHeld(SHA, META.name, META.size, True, 0, "stored")
    assert conn.job is JobState.HAVE_FILE
    start = one(feed(conn, JobStart()), ev.StartJob)
    assert start == ev.StartJob(JOB, None, SHA, META.name, None)


def test_a_shared_input_replaces_a_received_file_and_needs_an_output_again() -> None:
    conn = worker_in(JobState.HAVE_FILE)
    feed(conn, SharedInputPath(INPUT))
    tell(conn, ev.InputAccepted())
    side = conn.worker
    assert side is not None
    assert (conn.job, side.input_path, side.input_sha256) == (JobState.HAVE_INPUT, INPUT, None)
    assert one(feed(conn, JobStart()), ev.Violation).code == ErrorCode.UNEXPECTED_MESSAGE


def test_a_received_file_with_a_shared_output() -> None:
    conn = worker_in(JobState.HAVE_OUTPUT)
    hold_file(conn)
    assert conn.job is JobState.READY
    start = one(feed(conn, JobStart()), ev.StartJob)
    assert start == ev.StartJob(JOB, None, SHA, META.name, OUTPUT, 3.0, 0.0)


# ===================================================================== results


def found(owner: str | None = PEER, running: bool = False, out: str | None = OUTPUT) -> object:
    return ev.ResultsFound("run-9", owner, running, out)


def test_results_are_sent_to_the_peer_that_ran_the_job() -> None:  # PROTOCOL.md 6.5
    conn = worker()
    data = b"PK\x05\x06" + bytes(18)
    sha = sha256(data)
    assert feed(conn, "RESULTS_REQUEST::run-9") == [ev.LookupResults("run-9")]
    assert conn.job is JobState.IDLE  # it does not touch the job session
    assert tell(conn, found(out=".rtc-jobs/run-9/output")) == [
        ev.PackResults("run-9", ".rtc-jobs/run-9/output")
    ]
    outputs = tell(conn, ev.FileToSend("results-run-9.zip", len(data), sha))
    assert frames(outputs) == [f"FILE_META::results-run-9.zip::22::{sha}::65536"]
    stream = one(feed(conn, "FILE_READY::0"), ev.StreamFrom)
    assert (stream.offset, stream.meta.sha256) == (0, sha)
    assert conn.send_chunk(data) == data
    conn.end_of_file()
    assert frames(conn.drain()) == ["END_OF_FILE"]
    ended = one(feed(conn, f"FILE_RECEIVED::{sha}"), ev.SendEnded)
    assert (ended.status, ended.sha256) == ("received", sha)
    assert conn.sender.state is SenderState.IDLE


@pytest.mark.parametrize(
    ("answer", "code", "detail"),
    [
        (found(owner="client-2"), "UNKNOWN_JOB", "no results for job run-9"),
        (found(owner=None, out=None), "UNKNOWN_JOB", "no results for job run-9"),
        (found(out=None), "UNKNOWN_JOB", "no results for job run-9"),
        (found(running=True), "UNEXPECTED_MESSAGE", "job run-9 is still running"),
    ],
    ids=["another peer's", "unknown", "no outputs", "running"],
)
def test_results_go_only_to_their_owner_and_not_while_the_job_runs(
    answer: object, code: str, detail: str
) -> None:
    conn = worker()
    feed(conn, "RESULTS_REQUEST::run-9")
    outputs = tell(conn, answer)
    assert sends(outputs) == [ProtocolErrorFrame(code, detail)]
    assert not violations(outputs)  # a decision of the worker, not the client's fault
    assert conn.sender.state is SenderState.IDLE
    assert one(feed(conn, "RESULTS_REQUEST::run-9"), ev.LookupResults)  # may ask again


@pytest.mark.parametrize("step", ["lookup", "pack"])
def test_results_that_cannot_be_found_or_packed_are_an_internal_error(step: str) -> None:
    conn = worker()
    action: object = one(feed(conn, "RESULTS_REQUEST::run-9"), ev.LookupResults)
    if step == "pack":
        action = one(tell(conn, found()), ev.PackResults)
    outputs = tell(conn, ev.ActionFailed(action, "the ZIP could not be built"))  # type: ignore[arg-type]
    assert sends(outputs) == [ProtocolErrorFrame("INTERNAL_ERROR", "the ZIP could not be built")]
    assert conn.sender.state is SenderState.IDLE


@pytest.mark.parametrize(
    "state", [SenderState.AWAIT_READY, SenderState.SENDING, SenderState.AWAIT_RECEIVED]
)
def test_no_results_while_a_file_is_being_sent(state: SenderState) -> None:
    conn = sender_in(Role.WORKER, state)
    before = snapshot(conn)
    assert sends(feed(conn, "RESULTS_REQUEST::run-9")) == [
        ProtocolErrorFrame("UNEXPECTED_MESSAGE", "a file is already being sent")
    ]
    assert snapshot(conn) == before


def test_a_client_that_cannot_take_our_file_ends_the_send_unanswered() -> None:
    conn = sender_in(Role.WORKER, SenderState.AWAIT_READY)
    outputs = feed(conn, "PROTOCOL_ERROR::UNEXPECTED_MESSAGE::a transfer is open")
    ended = one(outputs, ev.SendEnded)
    assert (ended.status, ended.code) == ("failed", "UNEXPECTED_MESSAGE")
    assert sends(outputs) == [] and not violations(outputs)
    # Any other PROTOCOL_ERROR is only logged: never an error in answer to an error.
    outputs = feed(conn, "PROTOCOL_ERROR::INTERNAL_ERROR::oops")
    assert one(outputs, ev.Note).text == "peer reports INTERNAL_ERROR: oops"
    assert sends(outputs) == []


def test_a_verdict_naming_another_sha256_is_answered_hash_mismatch() -> None:  # 6.7
    conn = sender_in(Role.WORKER, SenderState.AWAIT_RECEIVED)
    outputs = feed(conn, "FILE_RECEIVED::" + "b" * 64)
    assert frames(outputs) == ["TRANSFER_ERROR::HASH_MISMATCH::FILE_RECEIVED names another sha256"]
    assert one(outputs, ev.SendEnded).status == "failed"


# ===================================================================== results via storage


def test_results_via_storage_are_uploaded_after_the_job_completes() -> None:  # 6.5
    conn = worker()
    feed(conn, "JOB_ID::run-10")
    assert feed(conn, "RESULTS_VIA_STORAGE") == []
    worker_in(JobState.READY, conn)
    one(feed(conn, "JOB_START"), ev.StartJob)
    outputs = tell(conn, complete("run-10"))
    assert [type(o) for o in outputs] == [ev.Send, ev.Send, ev.UploadResults]
    assert frames(outputs)[1] == f"JOB_COMPLETE::run-10::{OUTPUT}::1::0.00"
    assert outputs[-1] == ev.UploadResults("run-10", OUTPUT)
    outputs = tell(conn, ev.ResultsUploaded("run-10", "/download/run-10", SHA, 7, "cap-1"))
    assert sends(outputs) == [ResultsStored("run-10", "/download/run-10", SHA, 7, "cap-1")]
    assert frames(outputs) == [f"RESULTS_STORED::run-10::/download/run-10::{SHA}::7::cap-1"]
    # It held for that job only.
    worker_in(JobState.READY, conn)
    one(feed(conn, "JOB_START"), ev.StartJob)
    assert not [o for o in tell(conn, complete(JOB)) if isinstance(o, ev.UploadResults)]


def test_results_via_storage_wait_for_a_job_that_completes() -> None:
    conn = worker_in(JobState.RUNNING)
    feed(conn, "RESULTS_VIA_STORAGE")  # while the job runs: for the running one
    assert not [
        o for o in tell(conn, ev.JobEnded(JOB, reason="x")) if isinstance(o, ev.UploadResults)
    ]
    worker_in(JobState.READY, conn)
    one(feed(conn, "JOB_START"), ev.StartJob)
    assert tell(conn, complete(JOB))[-1] == ev.UploadResults(JOB, OUTPUT)


def test_a_failed_upload_is_an_internal_error() -> None:
    conn = worker()
    outputs = tell(conn, ev.ActionFailed(ev.UploadResults(JOB, None), "storage unreachable"))
    assert sends(outputs) == [ProtocolErrorFrame("INTERNAL_ERROR", "storage unreachable")]


@pytest.mark.parametrize("results_service", [True, False])
def test_when_the_client_has_gone_the_results_are_uploaded(results_service: bool) -> None:
    conn = worker_in(JobState.RUNNING, worker(results_service=results_service))
    conn.close()
    assert conn.closed and conn.drain() == []
    outputs = tell(conn, complete(JOB))
    uploads = [o for o in outputs if isinstance(o, ev.UploadResults)]
    assert uploads == ([ev.UploadResults(JOB, OUTPUT)] if results_service else [])
    failed = worker_in(JobState.RUNNING, worker())
    failed.close()
    assert not [
        o for o in tell(failed, ev.JobEnded(JOB, reason="x")) if isinstance(o, ev.UploadResults)
    ]


# ===================================================================== busy, logs, close


def test_a_busy_worker_refuses_every_other_connection_until_it_is_idle() -> None:
    pair = ConnectionPair(SimulatedWorld(job_wait=True))
    other = worker_in(JobState.READY)
    pair.workers.append(other)
    pair.send(SharedInputPath(INPUT))
    pair.send(SharedOutputPath(OUTPUT))
    pair.send(JobStart())
    job_id = pair.worker.worker.running.job_id  # type: ignore[union-attr]
    outputs = feed(other, "JOB_START")
    assert sends(outputs) == [
        ProtocolErrorFrame("WORKER_BUSY", f"another job ({job_id}) is running")
    ]
    assert other.job is JobState.READY  # its paths stay: it may try again later
    pair.finish_job()
    assert one(feed(other, "JOB_START"), ev.StartJob).job_id == JOB


def test_logs_are_sent_only_while_a_job_runs() -> None:
    conn = worker_in(JobState.READY)
    assert conn.send_log("too early") is False
    with pytest.raises(LocalProtocolError) as info:
        conn.send(JobLog("too early"))
    assert info.value.code == ErrorCode.UNEXPECTED_MESSAGE
    with pytest.raises(LocalProtocolError):
        conn.send(PathValidated("input"))  # a worker's replies come from its decisions
    assert conn.drain() == []
    one(feed(conn, JobStart()), ev.StartJob)
    with pytest.raises(LocalProtocolError):
        conn.send(JobFailed(JOB, "x"))
    assert conn.send_log("") is True
    assert frames(conn.drain()) == ["JOB_LOG::"]


def test_close_keeps_an_open_partial_and_stops_a_stream() -> None:
    conn = receiver_in(Role.WORKER, ReceiverState.RECEIVING)
    conn.close()
    assert conn.drain() == [ev.Discard(1, keep=True)]
    conn.close()
    assert conn.drain() == []  # once
    sending = sender_in(Role.WORKER, SenderState.SENDING)
    assert sending.send_chunk(b"abc") == b"abc"
    sending.close()
    assert sending.send_chunk(b"abc") is None


# ===================================================================== pumped


def test_a_shared_job_pumped_against_a_client() -> None:
    pair = ConnectionPair(job_id_factory=lambda: JOB)
    pair.send(SharedInputPath(INPUT))
    pair.send(SharedOutputPath(OUTPUT))
    pair.send(JobStart())
    assert [frame for _, frame in pair.frames] == [
        f"SHARED_INPUT_PATH::{INPUT}",
        "PATH_VALIDATED::input",
        f"SHARED_OUTPUT_PATH::{OUTPUT}",
        "PATH_VALIDATED::output",
        "JOB_START",
        "JOB_LOG::epoch 1 done",
        'JOB_METRICS::{"validation_ms":1.0,"file_access_ms":0.25,"run_s":0.5,"total_s":1.0}',
        f"JOB_COMPLETE::{JOB}::{OUTPUT}::1::0.01",
    ]
    assert [d for d, _ in pair.frames] == ["C->W", "W->C"] * 2 + ["C->W"] + ["W->C"] * 3
    assert pair.worker.job is JobState.IDLE
    assert pair.client.job == pair.client.job._replace(worker=JobState.IDLE)
    delivered = [e.message for e in pair.events if isinstance(e, ev.Delivered)]
    assert [type(m).__name__ for m in delivered] == [
        "PathValidated",
        "PathValidated",
        "JobLog",
        "JobMetrics",
        "JobComplete",
    ]
