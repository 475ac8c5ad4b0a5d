"""End to end over real aiortc peer connections and a real signaling server on loopback:
shared-storage jobs, every PATH_ERROR reason, traversal, protocol errors, cancel, busy."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from protocol import (
    JobComplete,
    JobFailed,
    JobLog,
    PathError,
    PathValidated,
    ProtocolErrorFrame,
)
from protocol.signaling import SignalingError
from rtc_worker.client import (
    JobFailedError,
    PathRefusedError,
    RTCClient,
    WorkerBusy,
    WorkerProtocolError,
)
from tests.conftest import PACKAGE, Signaling, make_zip, recv_until, tiny_tmpfs

PY = sys.executable
pytestmark = pytest.mark.asyncio


async def validate_paths(conn: Any, input_path: str, output_path: str) -> None:
    """Send both shared paths and require PATH_VALIDATED for each."""
    conn.send(f"SHARED_INPUT_PATH::{input_path}")
    assert await conn.recv(10) == PathValidated("input")
    conn.send(f"SHARED_OUTPUT_PATH::{output_path}")
    assert await conn.recv(10) == PathValidated("output")


async def test_job_succeeds_with_manifest_and_no_file_bytes_on_the_channel(
    signaling: Signaling, start_worker: Any, shared_root: Path, package: Path
) -> None:
    await start_worker(shared_root=shared_root)
    frames: list[tuple[str, str | bytes]] = []
    logs: list[str] = []
    async with RTCClient(signaling.url, trace=lambda d, f: frames.append((d, f))) as client:
        workers = await client.workers()
        assert [w.peer_id for w in workers] == ["worker-1"]
        assert workers[0].metadata["shared_storage"] is True
        result = await client.submit_shared(
            "worker-1", "inputs/package.zip", "outputs/run1", job_id="job-42", on_log=logs.append
        )
    assert result.job_id == "job-42"
    assert result.output_path == "outputs/run1"
    manifest_path = shared_root / "outputs" / "run1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert result.file_count == 1
    assert result.total_mb == round(manifest_path.stat().st_size / 1e6, 2)
    assert set(result.metrics) == {
        "validation_ms",
        "file_access_ms",
        "run_s",
        "total_s",
        "transfer_mb_s",
    }
    assert result.metrics["transfer_mb_s"] == 0  # the shared road moves no byte
    assert result.metrics["total_s"] >= result.metrics["run_s"] >= 0
    entries = {e["path"]: e for e in manifest["files"]}
    assert set(entries) == set(PACKAGE)
    for name, data in PACKAGE.items():
        assert entries[name]["size"] == len(data)
        assert entries[name]["sha256"] == hashlib.sha256(data).hexdigest()
    assert entries["config.json"]["mime_type"] == "application/json"
    assert entries["data/train.csv"]["mime_type"].startswith("text/")
    assert any("manifest.json" in line for line in logs)
    # Only text frames, and only a few hundred bytes each way: no file bytes crossed.
    assert all(isinstance(frame, str) for _, frame in frames)
    sent = [f for d, f in frames if d == "send"]
    # the channel handshake first (PROTOCOL.md 2.5), then the job's frames
    assert [f.partition("::")[0] for f in sent[:2]] == ["AUTH_HELLO", "AUTH_RESPONSE"]
    assert sent[2:] == [
        "JOB_ID::job-42",
        "SHARED_INPUT_PATH::inputs/package.zip",
        "SHARED_OUTPUT_PATH::outputs/run1",
        "JOB_START",
    ]
    received = [f for d, f in frames if d == "recv"]
    assert received[-1] == f"JOB_COMPLETE::job-42::outputs/run1::1::{result.total_mb:.2f}"
    assert received[-2].startswith("JOB_METRICS::{")
    assert sum(len(f) for _, f in frames) < 20_000 < len(package.read_bytes())
    # The extraction workdir is removed after the job.
    assert list((shared_root / ".rtc-work").iterdir()) == []


async def test_command_job_streams_logs_and_counts_outputs(
    start_worker: Any, client: RTCClient, shared_root: Path, package: Path
) -> None:
    script = (
        "import os, sys; inp, work, out = sys.argv[1:4]; "
        "print('extracted', sorted(os.listdir(work))); "
        "print('line two', flush=True); "
        "open(os.path.join(out, 'a.txt'), 'w').write('x' * 1500000); "
        "os.makedirs(os.path.join(out, 'sub')); "
        "open(os.path.join(out, 'sub', 'b.txt'), 'w').write('y' * 10)"
    )
    command = f'{PY} -c "{script}" {{input}} {{workdir}} {{output}}'
    await start_worker(shared_root=shared_root, job_command=command)
    logs: list[str] = []
    result = await client.submit_shared(
        "worker-1", "inputs/package.zip", "outputs/cmd", on_log=logs.append
    )
    assert result.file_count == 2
    assert result.total_mb == 1.5  # 1_500_010 bytes
    assert logs[0] == "extracted ['README.md', 'config.json', 'data', 'weights.bin']"
    assert logs[1] == "line two"
    assert result.job_id.startswith("job-")


async def test_failing_command_gives_job_failed_with_the_exit_code(
    start_worker: Any, client: RTCClient, shared_root: Path, package: Path
) -> None:
    await start_worker(
        shared_root=shared_root, job_command=f"{PY} -c \"print('boom'); raise SystemExit(3)\""
    )
    logs: list[str] = []
    with pytest.raises(JobFailedError) as info:
        await client.submit_shared(
            "worker-1", "inputs/package.zip", "outputs/x", job_id="fails", on_log=logs.append
        )
    assert info.value.job_id == "fails"
    assert info.value.reason == "Job command exited with code 3"
    assert logs == ["boom"]


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("inputs/missing.zip", "Input path does not exist: inputs/missing.zip"),
        ("../outside.txt", "Path outside shared storage: ../outside.txt"),
        ("inputs/../../outside.txt", "Path outside shared storage: inputs/../../outside.txt"),
        ("/etc/passwd", "Path outside shared storage: /etc/passwd"),
        ("inputs/link-file", "Path outside shared storage: inputs/link-file"),
        ("inputs/link-dir/secret.txt", "Path outside shared storage: inputs/link-dir/secret.txt"),
        ("inputs/a\x00b", "Path outside shared storage: inputs/a\x00b"),
        ("inputs/corrupt.zip", "File corrupted or invalid format: inputs/corrupt.zip"),
        ("inputs/slip.zip", "File corrupted or invalid format: inputs/slip.zip"),
    ],
)
async def test_input_path_errors(
    start_worker: Any, client: RTCClient, shared_root: Path, path: str, reason: str
) -> None:
    outside = shared_root.parent / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (shared_root.parent / "outside.txt").write_text("secret")
    (shared_root / "inputs" / "link-file").symlink_to(outside / "secret.txt")
    (shared_root / "inputs" / "link-dir").symlink_to(outside)
    (shared_root / "inputs" / "corrupt.zip").write_bytes(b"PK\x03\x04" + os.urandom(3000))
    with zipfile.ZipFile(shared_root / "inputs" / "slip.zip", "w") as archive:
        archive.writestr("ok.txt", b"fine")
        archive.writestr("../../evil.txt", b"evil")
    await start_worker(shared_root=shared_root)
    with pytest.raises(PathRefusedError) as info:
        await client.submit_shared("worker-1", path, "outputs/o")
    assert info.value.reason == reason
    # the exception's class is the reason's (chosen by the protocol, not by text)
    assert info.value.kind is not None and type(info.value).KIND is info.value.kind
    assert reason.startswith(info.value.kind.value)
    assert str(shared_root) not in info.value.reason
    assert not (shared_root.parent / "evil.txt").exists()
    assert not (shared_root / "outputs" / "o").exists()


async def test_output_path_errors(
    start_worker: Any, client: RTCClient, shared_root: Path, package: Path
) -> None:
    outside = shared_root.parent / "elsewhere"
    outside.mkdir()
    (shared_root / "outputs" / "link").symlink_to(outside)
    (shared_root / "outputs" / "file").write_text("x")
    await start_worker(shared_root=shared_root)
    for path, reason in [
        ("../escape", "Path outside shared storage: ../escape"),
        ("outputs/link/new", "Path outside shared storage: outputs/link/new"),
        ("outputs/file", "Not a directory: outputs/file"),
    ]:
        with pytest.raises(PathRefusedError) as info:
            await client.submit_shared("worker-1", "inputs/package.zip", path)
        assert info.value.reason == reason
    assert not (shared_root.parent / "escape").exists()
    assert list(outside.iterdir()) == []


async def test_no_existence_oracle_outside_the_root(
    start_worker: Any, client: RTCClient, shared_root: Path
) -> None:
    (shared_root.parent / "exists.txt").write_text("x")
    (shared_root / "inputs" / "to-existing").symlink_to(shared_root.parent / "exists.txt")
    (shared_root / "inputs" / "to-missing").symlink_to(shared_root.parent / "missing.txt")
    await start_worker(shared_root=shared_root)
    conn = await client.connect("worker-1", raw=True)
    replies = {}
    for path in ["../exists.txt", "../missing.txt", "inputs/to-existing", "inputs/to-missing"]:
        conn.send(f"SHARED_INPUT_PATH::{path}")
        replies[path] = await conn.recv(10)
    assert {type(r) for r in replies.values()} == {PathError}
    prefixes = {r.reason.removesuffix(p) for p, r in replies.items()}
    assert prefixes == {"Path outside shared storage: "}


async def test_input_vanished_after_validation_is_file_not_found(
    start_worker: Any, client: RTCClient, shared_root: Path, package: Path
) -> None:
    await start_worker(shared_root=shared_root)
    conn = await client.connect("worker-1", raw=True)
    await validate_paths(conn, "inputs/package.zip", "outputs/v")
    package.unlink()
    conn.send("JOB_START")
    assert await conn.recv(10) == PathError("File not found: inputs/package.zip")
    failed = await conn.recv(10)
    assert isinstance(failed, JobFailed)
    assert failed.reason == "File not found: inputs/package.zip"


async def test_file_swapped_for_a_symlink_after_validation_is_refused(
    start_worker: Any, client: RTCClient, shared_root: Path, package: Path
) -> None:
    secret = make_zip(shared_root.parent / "secret.zip", {"secret.txt": b"do not read"})
    await start_worker(shared_root=shared_root)
    conn = await client.connect("worker-1", raw=True)
    await validate_paths(conn, "inputs/package.zip", "outputs/swap")
    package.unlink()
    package.symlink_to(secret)
    conn.send("JOB_START")
    assert await conn.recv(10) == PathError("Path outside shared storage: inputs/package.zip")
    assert isinstance(await conn.recv(10), JobFailed)
    assert not (shared_root / "outputs" / "swap" / "manifest.json").exists()


@pytest.mark.skipif(
    os.geteuid() == 0 and shutil.which("setpriv") is None,
    reason="as root, dropping CAP_DAC_OVERRIDE needs setpriv (util-linux)",
)
async def test_permission_denied(signaling: Signaling, shared_root: Path, tmp_path: Path) -> None:
    """A file the worker cannot read. The worker runs as a separate process without
    the capabilities that let root read anything."""
    from tests.conftest import worker_subprocess

    make_zip(shared_root / "inputs" / "locked.zip", PACKAGE).chmod(0o000)
    log = tmp_path / "worker.log"
    proc = worker_subprocess(
        signaling.url, "perm-worker", shared_root, honour_permissions=True, log_path=log
    )
    try:
        async with RTCClient(signaling.url) as rtc_client:
            await rtc_client.wait_for_worker("perm-worker", 20)
            with pytest.raises(PathRefusedError) as info:
                await rtc_client.submit_shared("perm-worker", "inputs/locked.zip", "outputs/p")
        assert info.value.reason == "Permission denied: inputs/locked.zip"
    finally:
        proc.terminate()
        proc.wait(10)
    assert "Traceback" not in log.read_text()


async def test_disk_full_fails_the_job_and_removes_partial_results(
    start_worker: Any, client: RTCClient, tmp_path: Path
) -> None:
    with tiny_tmpfs(tmp_path / "small", size="2m") as root:
        make_zip(root / "in.zip", {"a.txt": b"a"})
        (root / "out").mkdir()
        (root / "out" / "keep.txt").write_text("was here before")
        script = (
            "import sys; f = open(sys.argv[1] + '/big.bin', 'wb'); "
            "[f.write(b'x' * 65536) for _ in range(100)]; f.close()"
        )
        await start_worker(shared_root=root, job_command=f'{PY} -c "{script}" {{output}}')
        with pytest.raises(JobFailedError) as info:
            await client.submit_shared("worker-1", "in.zip", "out", job_id="full")
        assert info.value.reason == "Disk space exhausted on shared storage"
        assert sorted(p.name for p in (root / "out").iterdir()) == ["keep.txt"]


async def test_job_cancel_terminates_the_job(
    start_worker: Any, client: RTCClient, shared_root: Path, package: Path
) -> None:
    script = "import time; print('started', flush=True); time.sleep(60)"
    await start_worker(shared_root=shared_root, job_command=f'{PY} -c "{script}"')
    conn = await client.connect("worker-1", raw=True)
    conn.send("JOB_ID::to-cancel")
    await validate_paths(conn, "inputs/package.zip", "outputs/c")
    conn.send("JOB_START")
    assert await conn.recv(10) == JobLog("started")
    conn.send("JOB_CANCEL")
    assert await recv_until(conn, (JobFailed,), timeout=15) == JobFailed("to-cancel", "cancelled")
    # The process is gone and the worker is free again for the next job.
    conn.send("SHARED_INPUT_PATH::inputs/package.zip")
    assert await conn.recv(10) == PathValidated("input")


async def test_protocol_errors_keep_the_connection_usable(
    start_worker: Any, client: RTCClient, shared_root: Path, package: Path
) -> None:
    await start_worker(shared_root=shared_root)
    conn = await client.connect("worker-1", raw=True)
    cases = [
        ("HELLO::world", "UNKNOWN_MESSAGE"),
        ("JOB_START", "UNEXPECTED_MESSAGE"),
        ("JOB_CANCEL", "UNEXPECTED_MESSAGE"),
        ("JOB_ID::bad id", "INVALID_JOB_ID"),
        ("SHARED_INPUT_PATH::" + "a" * 5000, "PATH_TOO_LONG"),
        ("JOB_LOG::" + "x" * 70_000, "FRAME_TOO_LARGE"),
        ("JOB_START::now", "MALFORMED_FRAME"),
    ]
    for frame, code in cases:
        conn.send(frame)
        reply = await conn.recv(10)
        assert isinstance(reply, ProtocolErrorFrame), frame
        assert reply.code == code
    # The same channel still runs jobs: unnamed (the worker names it), then named.
    await validate_paths(conn, "inputs/package.zip", "outputs/first")
    conn.send("JOB_START")
    first = await recv_until(conn, (JobComplete,))
    conn.send("JOB_ID::second")
    await validate_paths(conn, "inputs/package.zip", "outputs/second")
    conn.send("JOB_START")
    second = await recv_until(conn, (JobComplete,))
    assert (first.file_count, second.file_count) == (1, 1)
    assert second.job_id == "second" != first.job_id
    assert (shared_root / "outputs" / "second" / "manifest.json").is_file()


async def test_legacy_start_and_second_start_while_running(
    start_worker: Any, client: RTCClient, shared_root: Path, package: Path
) -> None:
    script = "import time; time.sleep(1.5); print('done')"
    await start_worker(shared_root=shared_root, job_command=f'{PY} -c "{script}"')
    conn = await client.connect("worker-1", raw=True)
    await validate_paths(conn, "inputs/package.zip", "outputs/legacy")
    conn.send("SHARED_STORAGE_JOB::start")
    conn.send("JOB_START")
    reply = await conn.recv(10)
    assert isinstance(reply, ProtocolErrorFrame) and reply.code == "UNEXPECTED_MESSAGE"
    complete = await recv_until(conn, (JobComplete, JobFailed))
    assert isinstance(complete, JobComplete)
    assert complete.output_path == "outputs/legacy"


async def test_busy_worker_refuses_a_second_client(
    signaling: Signaling, start_worker: Any, shared_root: Path, package: Path
) -> None:
    script = (
        "import sys, time; print('busy', flush=True); "
        "time.sleep(60 if sys.argv[1].endswith('long') else 0)"
    )
    await start_worker(shared_root=shared_root, job_command=f'{PY} -c "{script}" {{output}}')
    async with RTCClient(signaling.url) as first, RTCClient(signaling.url) as second:
        conn = await first.connect("worker-1", raw=True)
        conn.send("JOB_ID::long-one")
        conn.send("SHARED_INPUT_PATH::inputs/package.zip")
        await conn.recv(10)
        conn.send("SHARED_OUTPUT_PATH::outputs/long")
        await conn.recv(10)
        conn.send("JOB_START")
        assert await conn.recv(10) == JobLog("busy")
        with pytest.raises(WorkerBusy) as info:
            await second.submit_shared("worker-1", "inputs/package.zip", "outputs/other")
        # another client's job id is never shown
        assert "long-one" not in info.value.detail
        assert "another job is running" in info.value.detail
        conn.send("JOB_CANCEL")
        assert await recv_until(conn, (JobFailed,)) == JobFailed("long-one", "cancelled")
        # Once the first job ended, the second client's connection runs its job.
        result = await second.submit_shared("worker-1", "inputs/package.zip", "outputs/other")
        assert (result.file_count, result.logs) == (0, ("busy",))


async def test_worker_without_shared_storage_says_so_and_keeps_serving(
    start_worker: Any, client: RTCClient
) -> None:
    worker = await start_worker()
    assert worker.shared_storage_root is None and worker.resources.shared is None
    (info,) = await client.workers()
    assert info.metadata["shared_storage"] is False
    with pytest.raises(WorkerProtocolError) as err:
        await client.submit_shared("worker-1", "inputs/a.zip", "outputs/a")
    assert err.value.code == "NO_SHARED_STORAGE"
    conn = await client.connect("worker-1", raw=True)
    conn.send("JOB_START")
    reply = await conn.recv(10)
    assert isinstance(reply, ProtocolErrorFrame) and reply.code == "UNEXPECTED_MESSAGE"


async def test_wrong_signaling_token(shared_root: Path) -> None:
    from rtc_worker.settings import WorkerSettings
    from rtc_worker.worker import RTCWorkerClient
    from tests.conftest import start_signaling

    server = await start_signaling(token="s3cret")
    try:
        async with RTCClient(server.url, token="wrong") as bad:
            with pytest.raises(SignalingError) as info:
                await bad.workers()
            assert info.value.code == "UNAUTHORIZED"
        worker = RTCWorkerClient(
            WorkerSettings(
                signaling_url=server.url, peer_id="w", token="nope", shared_root=shared_root
            )
        )
        with pytest.raises(SignalingError) as info:
            await asyncio.wait_for(worker.run(), 10)
        assert info.value.code == "UNAUTHORIZED"
        async with RTCClient(server.url, token="s3cret") as good:
            assert await good.workers() == []
    finally:
        await server.runner.cleanup()


async def test_spoofed_from_is_replaced_by_the_server(
    signaling: Signaling, start_worker: Any, shared_root: Path
) -> None:
    """Mallory sends an offer claiming to be 'victim': the worker's answer goes to Mallory."""
    from protocol.signaling import RelayedAnswer
    from rtc_worker.identity import Identity
    from rtc_worker.signaling_client import SignalingClient
    from tests.signaling_helpers import register_with_key

    worker = await start_worker(shared_root=shared_root)
    victim = SignalingClient(signaling.url, "victim", "client", identity=Identity.generate())
    await victim.connect()
    from aiortc import RTCPeerConnection

    from rtc_worker.rtc import rtc_configuration

    pc = RTCPeerConnection(rtc_configuration([]))
    pc.createDataChannel("jobs")
    await pc.setLocalDescription(await pc.createOffer())
    import aiohttp

    async with aiohttp.ClientSession() as session:
        mallory = Identity.generate()
        ws, reply = await register_with_key(session, signaling.url, "mallory", "client", mallory)
        assert reply["type"] == "registered"
        await ws.send_json(
            {
                "type": "offer",
                "to": "worker-1",
                "from": "victim",
                "fingerprint": victim.fingerprint,
                "sdp": pc.localDescription.sdp,
            }
        )
        answer = await asyncio.wait_for(ws.receive_json(), 10)
        assert answer["type"] == "answer"
        assert answer["from"] == "worker-1" and answer["to"] == "mallory"
        assert answer["fingerprint"] == worker.identity.fingerprint
        await ws.close()
    with pytest.raises(TimeoutError):
        frame = await victim.recv(timeout=1.0)
        assert not isinstance(frame, RelayedAnswer)
    await victim.close()
    await pc.close()


async def test_worker_reconnects_when_signaling_restarts(
    start_worker: Any, shared_root: Path, package: Path
) -> None:
    from tests.conftest import free_port, start_signaling

    port = free_port()
    server = await start_signaling(port=port)
    from rtc_worker.settings import WorkerSettings
    from rtc_worker.worker import RTCWorkerClient

    worker = RTCWorkerClient(
        WorkerSettings(
            signaling_url=server.url,
            peer_id="phoenix",
            shared_root=shared_root,
            reconnect_max_delay_s=0.5,
        )
    )
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.registered.wait(), 10)
        await server.runner.cleanup()
        async with asyncio.timeout(10):
            while worker.registered.is_set():
                await asyncio.sleep(0.05)
        server = await start_signaling(port=port)
        await asyncio.wait_for(worker.registered.wait(), 15)
        async with RTCClient(server.url) as rtc_client:
            assert [w.peer_id for w in await rtc_client.workers()] == ["phoenix"]
            result = await rtc_client.submit_shared("phoenix", "inputs/package.zip", "outputs/r")
            assert result.file_count == 1
    finally:
        await worker.stop()
        await asyncio.wait_for(task, 15)
        await server.runner.cleanup()


async def test_an_endless_output_line_does_not_hang_the_job(
    start_worker: Any, client: RTCClient, shared_root: Path, package: Path
) -> None:
    script = (
        "import sys; sys.stdout.write('x' * 1100000 + chr(10)); "
        "[print('after', i) for i in range(3000)]"
    )
    await start_worker(shared_root=shared_root, job_command=f'{PY} -c "{script}"')
    logs: list[str] = []
    result = await asyncio.wait_for(
        client.submit_shared("worker-1", "inputs/package.zip", "outputs/long", on_log=logs.append),
        60,
    )
    assert result.file_count == 0
    assert logs[0].endswith("…[truncated]") and len(logs[0]) < 10_000
    assert logs[-1] == "after 2999"


async def test_job_processes_never_outlive_their_job(
    start_worker: Any, client: RTCClient, shared_root: Path, package: Path
) -> None:
    """A background child of the job is killed when the job ends, and on cancel."""
    script = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen(['sleep', '300']); "
        "open(sys.argv[1] + '/pid', 'w').write(str(p.pid)); "
        "print('started', flush=True); "
        "time.sleep(300 if 'cancel' in sys.argv[1] else 0)"
    )
    await start_worker(shared_root=shared_root, job_command=f'{PY} -c "{script}" {{output}}')

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # a zombie not yet reaped counts as gone
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]

    await client.submit_shared("worker-1", "inputs/package.zip", "outputs/ends")
    pid = int((shared_root / "outputs" / "ends" / "pid").read_text())
    for _ in range(50):
        if not alive(pid):
            break
        await asyncio.sleep(0.1)
    assert not alive(pid)

    conn = await client.connect("worker-1", raw=True)
    conn.send("JOB_ID::to-cancel")
    await validate_paths(conn, "inputs/package.zip", "outputs/cancel")
    conn.send("JOB_START")
    assert await conn.recv(10) == JobLog("started")
    conn.send("JOB_CANCEL")
    assert await recv_until(conn, (JobFailed,)) == JobFailed("to-cancel", "cancelled")
    pid = int((shared_root / "outputs" / "cancel" / "pid").read_text())
    for _ in range(50):
        if not alive(pid):
            break
        await asyncio.sleep(0.1)
    assert not alive(pid)


@pytest.mark.parametrize("path", [".", ".rtc-work", ".rtc-work/x", ".rtc-store", ".rtc-jobs/j"])
async def test_the_root_and_worker_folders_are_no_output_folders(
    start_worker: Any, client: RTCClient, shared_root: Path, package: Path, path: str
) -> None:
    await start_worker(shared_root=shared_root)
    with pytest.raises(PathRefusedError) as info:
        await client.submit_shared("worker-1", "inputs/package.zip", path)
    assert info.value.reason == f"Permission denied: {path}"


async def test_a_timed_out_job_does_not_poison_the_next_one(
    start_worker: Any, client: RTCClient, shared_root: Path, package: Path
) -> None:
    script = "import sys, time; time.sleep(30 if sys.argv[1].endswith('slow') else 0)"
    await start_worker(shared_root=shared_root, job_command=f'{PY} -c "{script}" {{output}}')
    with pytest.raises(TimeoutError):
        await client.submit_shared(
            "worker-1", "inputs/package.zip", "outputs/slow", job_timeout=0.5
        )
    result = None
    for _ in range(50):  # the cancelled job frees the worker within its grace period
        try:
            result = await client.submit_shared("worker-1", "inputs/package.zip", "outputs/fast")
            break
        except WorkerBusy:
            await asyncio.sleep(0.2)
    assert result is not None and result.output_path == "outputs/fast"


async def test_an_error_from_the_client_is_not_answered(
    start_worker: Any, client: RTCClient, shared_root: Path
) -> None:
    await start_worker(shared_root=shared_root)
    conn = await client.connect("worker-1", raw=True)
    conn.send("PROTOCOL_ERROR::MALFORMED_FRAME::your frame was odd")
    conn.send("HELLO")
    reply = await conn.recv(10)  # the first reply is the one to HELLO
    assert isinstance(reply, ProtocolErrorFrame) and reply.code == "UNKNOWN_MESSAGE"


@pytest.mark.parametrize("path", [".", "./", ".rtc-store", ".rtc-store/objects", ".rtc-jobs"])
async def test_the_root_and_worker_folders_are_no_inputs(
    start_worker: Any, client: RTCClient, shared_root: Path, path: str
) -> None:
    (shared_root / ".rtc-store" / "objects").mkdir(parents=True, exist_ok=True)
    (shared_root / ".rtc-jobs").mkdir(exist_ok=True)
    await start_worker(shared_root=shared_root)
    with pytest.raises(PathRefusedError) as info:
        await client.submit_shared("worker-1", path, "outputs/x")
    assert info.value.reason == f"Permission denied: {path}"
