"""End to end over real aiortc peers and a real signaling server: files sent over the
data channel when there is no shared storage (resume, dedupe, verification, legacy
form, results download, mixed modes, the client's retry over the channel)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from protocol import (
    FileProgress,
    FileReady,
    FileReceived,
    JobComplete,
    Message,
    PathValidated,
    ProtocolErrorFrame,
    TransferError,
)
from rtc_worker.client import (
    PathRefusedError,
    RTCClient,
    TransferFailedError,
    WorkerProtocolError,
)
from rtc_worker.holdings import partial_key
from rtc_worker.identity import Identity
from rtc_worker.rtc import ChannelClosed
from rtc_worker.storage import BlobStore, layout
from tests.conftest import (
    PACKAGE,
    Signaling,
    held_partial,
    make_zip,
    offer,
    recv_until,
    worker_subprocess,
)

pytestmark = pytest.mark.asyncio


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def local_package(tmp_path: Path) -> Path:
    """A training package on the client's own disk (no shared storage)."""
    return make_zip(tmp_path / "client" / "package.zip", PACKAGE)


def big_file(path: Path, size: int, seed: int = 3) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def meta_frame(name: str, data: bytes, chunk: int = 65536) -> str:
    return f"FILE_META::{name}::{len(data)}::{sha(data)}::{chunk}"


async def test_fallback_job_with_results_downloaded_and_verified(
    start_worker: Any, client: RTCClient, local_package: Path, tmp_path: Path
) -> None:
    worker = await start_worker()
    assert worker.shared_storage_root is None
    downloads = tmp_path / "downloads"
    upload_progress: list[tuple[int, int]] = []
    outcome = await client.submit_file(
        "worker-1",
        local_package,
        downloads,
        job_id="chan-1",
        on_upload_progress=lambda got, size: upload_progress.append((got, size)),
    )
    size = local_package.stat().st_size
    assert outcome.upload.outcome.status == "received"
    assert outcome.upload.bytes_sent == size
    assert outcome.upload.outcome.sha256 == sha(local_package.read_bytes())
    assert outcome.job.job_id == "chan-1"
    # job folders are per identity: the client's own
    assert client.identity is not None
    assert outcome.job.output_path == f".rtc-jobs/{client.identity.fingerprint}/chan-1/output"
    assert outcome.results_zip == downloads / "results-chan-1.zip"
    assert sha(outcome.results_zip.read_bytes()) == outcome.download.sha256
    manifest = json.loads((outcome.results_dir / "manifest.json").read_text())
    assert {entry["path"] for entry in manifest["files"]} == set(PACKAGE)
    assert manifest["input"] == "package.zip"
    # The worker stored the input once, by content, in its data dir.
    stored = worker.store.object_path(outcome.upload.outcome.sha256)
    assert stored.read_bytes() == local_package.read_bytes()


async def test_same_content_sent_twice_is_sent_once(
    start_worker: Any, client: RTCClient, local_package: Path, tmp_path: Path
) -> None:
    await start_worker()
    conn = await client.connect("worker-1")
    first = await conn.send_file(local_package)
    copy = tmp_path / "elsewhere" / "renamed.zip"
    copy.parent.mkdir()
    copy.write_bytes(local_package.read_bytes())
    second = await conn.send_file(copy)
    assert (first.outcome.status, first.bytes_sent) == ("received", local_package.stat().st_size)
    assert (second.outcome.status, second.bytes_sent) == ("exists", 0)
    # A file found by its content is the next job's input, like a received one.
    _, job = await conn.run_file(copy, job_id="dedupe")
    assert job.file_count == 1


async def test_resume_after_the_client_connection_drops(
    start_worker: Any, client: RTCClient, tmp_path: Path
) -> None:
    worker = await start_worker()
    data = big_file(tmp_path / "big.bin", 24_000_000)
    conn = await client.connect("worker-1")
    closing: list[asyncio.Task[None]] = []

    def drop_at_half(received: int, size: int) -> None:
        if received >= size // 8 and not closing:  # the first progress report or so
            closing.append(asyncio.ensure_future(conn.close()))

    with pytest.raises(ChannelClosed):
        await conn.send_file(tmp_path / "big.bin", on_progress=drop_at_half)
    await closing[0]
    async with asyncio.timeout(10):  # the worker notices and keeps the partial
        while worker.active_sessions:
            await asyncio.sleep(0.05)
    held = held_partial(worker.store, client.identity.fingerprint, data)  # the client's own partial
    assert len(data) // 8 <= held < len(data)

    fresh = await client.connect("worker-1")
    result = await fresh.send_file(tmp_path / "big.bin")
    assert result.outcome.status == "received"
    assert result.outcome.offset == held
    assert result.bytes_sent == len(data) - held
    assert result.outcome.sha256 == sha(data)
    assert worker.store.object_path(sha(data)).read_bytes() == data


async def test_resume_after_a_worker_restart(signaling: Signaling, tmp_path: Path) -> None:
    """The worker is killed (SIGKILL) mid-transfer; a new worker process on the same
    data dir resumes from the bytes that reached its disk."""
    data = big_file(tmp_path / "client" / "big.bin", 8_000_000)
    data_dir = tmp_path / "worker-data"
    env = {"RTC_DATA_DIR": str(data_dir), "RTC_SHARED_ROOT_CANDIDATES": ""}

    def start() -> Any:
        return worker_subprocess(
            signaling.url, "restarted", None, extra_env=env, log_path=tmp_path / "worker.log"
        )

    proc = start()
    try:
        async with RTCClient(signaling.url, cache_dir=tmp_path / "cache") as rtc_client:
            await rtc_client.wait_for_worker("restarted", 20)
            raw = await rtc_client.connect("restarted", raw=True)
            assert await offer(raw, meta_frame("big.bin", data), data) == FileReady(0)
            half = 4_000_000 // 65536 * 65536
            for start_at in range(0, half, 65536):
                raw.send(data[start_at : start_at + 65536])
            store = BlobStore(layout.store_root(None, data_dir))
            async with asyncio.timeout(20):  # buffered writes reach the disk per MiB
                while held_partial(store, rtc_client.identity.fingerprint, data) < 2 * 1024 * 1024:
                    await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            held = held_partial(store, rtc_client.identity.fingerprint, data)
            assert 2 * 1024 * 1024 <= held <= half
            proc = start()
            await asyncio.sleep(0.5)  # the old registration goes when its socket closes
            await rtc_client.wait_for_worker("restarted", 20)
            fresh = await rtc_client.connect("restarted")
            result = await fresh.send_file(tmp_path / "client" / "big.bin")
            assert result.outcome.status == "received"
            assert result.outcome.offset == held
            assert result.bytes_sent == len(data) - held
    finally:
        proc.terminate()
        proc.wait(10)
    assert BlobStore(layout.store_root(None, data_dir)).object_path(sha(data)).read_bytes() == data


async def test_hash_mismatch_is_refused_and_nothing_is_stored(
    start_worker: Any, client: RTCClient
) -> None:
    worker = await start_worker()
    conn = await client.connect("worker-1", raw=True)
    data = b"real content " * 1000
    claimed = sha(b"other content")
    meta = f"FILE_META::x.bin::{len(data)}::{claimed}::65536"
    assert await offer(conn, meta, data) == FileReady(0)
    conn.send(data)
    conn.send("END_OF_FILE")
    error = await recv_until(conn, (TransferError, FileReceived))
    assert isinstance(error, TransferError) and error.code == "HASH_MISMATCH"
    assert not worker.store.has(claimed) and not worker.store.has(sha(data))
    assert worker.store.total_partial_bytes() == 0


async def test_size_mismatch_and_too_large(start_worker: Any, client: RTCClient) -> None:
    await start_worker(max_file_size=1000)
    conn = await client.connect("worker-1", raw=True)
    small = b"a" * 500
    assert await offer(conn, meta_frame("s.bin", small), small) == FileReady(0)
    conn.send(small[:100])
    conn.send("END_OF_FILE")
    error = await recv_until(conn, (TransferError,))
    assert error.code == "SIZE_MISMATCH"
    conn.send(meta_frame("big.bin", b"b" * 1001))
    error = await conn.recv(10)
    assert isinstance(error, TransferError) and error.code == "FILE_TOO_LARGE"
    conn.send("SHARED_INPUT_PATH::x")  # the channel still answers
    reply = await conn.recv(10)
    assert isinstance(reply, ProtocolErrorFrame) and reply.code == "NO_SHARED_STORAGE"


@pytest.mark.parametrize(
    "name", ["../evil.zip", "dir/evil.zip", "..", "a\x00b.zip", "tab\there.zip", "C:evil.zip"]
)
async def test_invalid_names_are_refused_and_nothing_is_written(
    start_worker: Any, client: RTCClient, tmp_path: Path, name: str
) -> None:
    worker = await start_worker()
    conn = await client.connect("worker-1", raw=True)
    data = b"payload"
    conn.send(meta_frame(name, data))
    reply = await conn.recv(10)
    assert isinstance(reply, TransferError) and reply.code == "INVALID_NAME"
    conn.send(data)  # a sender that streams anyway gets UNEXPECTED_DATA
    reply = await conn.recv(10)
    assert isinstance(reply, TransferError) and reply.code == "UNEXPECTED_DATA"
    assert worker.store.total_partial_bytes() == 0
    assert not list((worker.store.root / "objects").rglob("*.*"))
    assert not (tmp_path / "evil.zip").exists()


async def test_binary_frame_before_file_meta_is_unexpected_data(
    start_worker: Any, client: RTCClient
) -> None:
    await start_worker()
    conn = await client.connect("worker-1", raw=True)
    conn.send(b"\x00\x01 not in a transfer")
    reply = await conn.recv(10)
    assert isinstance(reply, TransferError) and reply.code == "UNEXPECTED_DATA"


async def test_file_cancel_keeps_the_partial_for_a_resume(
    start_worker: Any, client: RTCClient
) -> None:
    worker = await start_worker()
    conn = await client.connect("worker-1", raw=True)
    data = random.Random(5).randbytes(300_000)
    assert await offer(conn, meta_frame("c.bin", data), data) == FileReady(0)
    for start in range(0, 196_608, 65536):
        conn.send(data[start : start + 65536])
    conn.send("FILE_CANCEL")
    conn.send(meta_frame("c.bin", data))  # the same content again: resume
    ready = await recv_until(conn, (FileReady,))
    assert ready == FileReady(196_608)
    for start in range(196_608, len(data), 65536):
        conn.send(data[start : start + 65536])
    conn.send("END_OF_FILE")
    assert await recv_until(conn, (FileReceived, TransferError)) == FileReceived(sha(data))
    assert worker.store.object_path(sha(data)).read_bytes() == data


async def test_legacy_file_meta_form(start_worker: Any, client: RTCClient) -> None:
    worker = await start_worker()
    conn = await client.connect("worker-1", raw=True)
    with zipfile.ZipFile(tmp := Path(worker.settings.data_dir) / "legacy.zip", "w") as archive:
        archive.writestr("notes.txt", b"legacy client file")
    data = tmp.read_bytes()
    conn.send(f"FILE_META::legacy.zip:{len(data)}:gui")
    for start in range(0, len(data), 1000):  # chunks at once, no FILE_READY awaited
        conn.send(data[start : start + 1000])
    received = await recv_until(conn, (FileReceived, TransferError))
    assert received == FileReceived(sha(data))
    assert worker.store.object_path(sha(data)).read_bytes() == data
    conn.send("JOB_START")
    complete = await recv_until(conn, (JobComplete, ProtocolErrorFrame))
    assert isinstance(complete, JobComplete) and complete.file_count == 1


async def test_results_request_for_an_unknown_job(start_worker: Any, client: RTCClient) -> None:
    await start_worker()
    conn = await client.connect("worker-1")
    with pytest.raises(WorkerProtocolError) as info:
        await conn.download_results("no-such-job", Path("/nonexistent"), timeout=10)
    assert info.value.code == "UNKNOWN_JOB"


async def test_mixed_modes_in_one_session(
    start_worker: Any,
    client: RTCClient,
    shared_root: Path,
    package: Path,
    local_package: Path,
    tmp_path: Path,
) -> None:
    await start_worker(shared_root=shared_root)
    conn = await client.connect("worker-1")
    shared = await conn.run_shared("inputs/package.zip", "outputs/one", job_id="m1")
    upload, channel_job = await conn.run_file(local_package, job_id="m2")
    received, results = await conn.download_results("m2", tmp_path / "dl")
    again = await conn.run_shared("inputs/package.zip", "outputs/three", job_id="m3")
    # A file sent over the channel with a shared output folder.
    _, to_shared = await conn.run_file(local_package, job_id="m4", output_path="outputs/four")
    assert [r.job_id for r in (shared, channel_job, again, to_shared)] == ["m1", "m2", "m3", "m4"]
    assert upload.outcome.status == "received"
    assert client.identity is not None
    assert channel_job.output_path == f".rtc-jobs/{client.identity.fingerprint}/m2/output"
    assert (shared_root / channel_job.output_path / "manifest.json").is_file()
    assert (shared_root / "outputs" / "four" / "manifest.json").is_file()
    with zipfile.ZipFile(results) as archive:
        assert archive.namelist() == ["manifest.json"]
    assert received.sha256 == sha(results.read_bytes())
    # The channel job's input was stored once under the shared root.
    assert (shared_root / ".rtc-store" / "objects").is_dir()


async def test_client_retries_over_the_channel_after_a_corrupted_shared_input(
    start_worker: Any, client: RTCClient, shared_root: Path, local_package: Path
) -> None:
    (shared_root / "inputs" / "package.zip").write_bytes(b"PK\x03\x04 truncated garbage")
    await start_worker(shared_root=shared_root)
    progress: list[int] = []
    result = await client.submit_shared(
        "worker-1",
        "inputs/package.zip",
        "outputs/retried",
        job_id="retry",
        local_copy=local_package,
        on_progress=lambda got, size: progress.append(got),
    )
    manifest = json.loads((shared_root / "outputs" / "retried" / "manifest.json").read_text())
    assert {entry["path"] for entry in manifest["files"]} == set(PACKAGE)
    assert result.job_id == "retry"


async def test_client_retries_when_the_shared_input_is_missing(
    start_worker: Any, client: RTCClient, shared_root: Path, local_package: Path
) -> None:
    await start_worker(shared_root=shared_root)
    result = await client.submit_shared(
        "worker-1", "inputs/not-there.zip", "outputs/r2", local_copy=local_package
    )
    assert result.file_count == 1
    # Without a local copy the PATH_ERROR is the answer.
    with pytest.raises(PathRefusedError) as info:
        await client.submit_shared("worker-1", "inputs/not-there.zip", "outputs/r3")
    assert info.value.reason == "Input path does not exist: inputs/not-there.zip"


async def test_progress_is_paced_and_reaches_the_sender(
    start_worker: Any, client: RTCClient, tmp_path: Path
) -> None:
    await start_worker()
    big_file(tmp_path / "p.bin", 3_000_000, seed=9)
    conn = await client.connect("worker-1", raw=True)
    data = (tmp_path / "p.bin").read_bytes()
    assert await offer(conn, meta_frame("p.bin", data), data) == FileReady(0)
    for start in range(0, len(data), 65536):
        conn.send(data[start : start + 65536])
        if start % (1 << 20) == 0:
            await asyncio.sleep(0.3)  # a slow sender: progress frames appear
    conn.send("END_OF_FILE")
    frames: list[Message] = []
    while not isinstance(frames[-1] if frames else None, FileReceived | TransferError):
        frames.append(await conn.recv(15))
    progress = [f for f in frames if isinstance(f, FileProgress)]
    assert progress, "no FILE_PROGRESS for a transfer of several seconds"
    assert all(p.size == len(data) for p in progress)
    assert [p.received for p in progress] == sorted(p.received for p in progress)
    assert frames[-1] == FileReceived(sha(data))


async def test_a_shared_output_path_is_validated_for_channel_jobs(
    start_worker: Any, client: RTCClient, shared_root: Path, local_package: Path
) -> None:
    await start_worker(shared_root=shared_root)
    conn = await client.connect("worker-1")
    with pytest.raises(PathRefusedError) as info:
        await conn.run_file(local_package, output_path="../x")
    assert info.value.reason == "Path outside shared storage: ../x"
    assert not (shared_root.parent / "x").exists()
    # The file is held: the next job on it needs no bytes (a proof of possession on this
    # new connection, whose principal is not a key's and so not remembered across them).
    conn2 = await client.connect("worker-1", raw=True)
    data = local_package.read_bytes()
    reply = await offer(conn2, meta_frame("package.zip", data), data)
    assert type(reply).__name__ == "FileExists"
    conn2.send("SHARED_OUTPUT_PATH::outputs/after")
    assert await conn2.recv(10) == PathValidated("output")
    conn2.send("JOB_START")
    assert isinstance(await recv_until(conn2, (JobComplete,)), JobComplete)
    assert os.path.isfile(shared_root / "outputs" / "after" / "manifest.json")


async def test_transfer_failed_error_carries_the_code(
    start_worker: Any, client: RTCClient, tmp_path: Path
) -> None:
    await start_worker(max_file_size=10)
    path = tmp_path / "eleven.bin"
    path.write_bytes(b"x" * 11)
    conn = await client.connect("worker-1")
    with pytest.raises(TransferFailedError) as info:
        await conn.send_file(path)
    assert info.value.code == "FILE_TOO_LARGE"


async def test_the_worker_removes_partial_files_past_their_ttl(
    start_worker: Any, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data-ttl"
    store = BlobStore(layout.store_root(None, data_dir))
    old, fresh = b"o" * 1000, b"f" * 1000
    for content in (old, fresh):
        key = partial_key("c", sha(content))  # principal c's
        with store.open_partial(key, 2000, "x.bin", sha256=sha(content)) as partial:
            partial.write(content)
    stale = time.time() - 3 * 3600
    for path in (store.root / "partial").glob(f"*{sha(old)}*"):
        os.utime(path, (stale, stale))
    worker = await start_worker(data_dir=data_dir, partial_ttl_s=3600)
    async with asyncio.timeout(10):
        while worker.store.partial_keys() != [partial_key("c", sha(fresh))]:
            await asyncio.sleep(0.05)
    fresh_key = partial_key("c", sha(fresh))
    assert worker.store.partial_size(fresh_key, 2000, sha256=sha(fresh)) == 1000


async def test_a_live_transfer_is_not_taken_over_by_another_principal(
    signaling: Signaling, start_worker: Any, tmp_path: Path
) -> None:
    """B sends the content A is sending: B neither stops A's transfer nor resumes from
    A's bytes (its partial is its own), and nothing tells B that A is sending it."""
    worker = await start_worker()
    data = big_file(tmp_path / "same.bin", 16_000_000, seed=11)
    client_a = RTCClient(signaling.url, cache_dir=tmp_path / "ca", identity=Identity.generate())
    client_b = RTCClient(signaling.url, cache_dir=tmp_path / "cb", identity=Identity.generate())
    conn_a = await client_a.connect("worker-1")
    try:
        started = asyncio.Event()
        sending = asyncio.ensure_future(
            conn_a.send_file(tmp_path / "same.bin", on_progress=lambda got, size: started.set())
        )
        await asyncio.wait_for(started.wait(), 20)
        conn_b = await client_b.connect("worker-1")
        second = await conn_b.send_file(tmp_path / "same.bin")
        first_result = await asyncio.wait_for(sending, 60)
        assert first_result.outcome.status == "received"
        assert first_result.outcome.offset == 0 and first_result.bytes_sent == len(data)
        if second.outcome.status == "received":  # A was still sending: B sent it all
            assert (second.outcome.offset, second.bytes_sent) == (0, len(data))
        else:  # A had finished: B proved it holds the file
            assert (second.outcome.status, second.bytes_sent) == ("exists", 0)
        again = await conn_b.send_file(tmp_path / "same.bin")  # now its own: nothing sent
        assert (again.outcome.status, again.bytes_sent) == ("exists", 0)
        assert worker.store.object_path(sha(data)).read_bytes() == data
    finally:
        await client_a.close()
        await client_b.close()


async def test_a_cancelled_send_leaves_the_connection_usable(
    start_worker: Any, client: RTCClient, tmp_path: Path
) -> None:
    worker = await start_worker()
    data = big_file(tmp_path / "c.bin", 24_000_000, seed=12)
    conn = await client.connect("worker-1")
    started = asyncio.Event()
    sending = asyncio.ensure_future(
        conn.send_file(tmp_path / "c.bin", on_progress=lambda got, size: started.set())
    )
    await asyncio.wait_for(started.wait(), 20)
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    result = None
    for _ in range(50):  # FILE_CANCEL and its acknowledgement cross the channel first
        try:
            result = await conn.send_file(tmp_path / "c.bin")
            break
        except Exception as exc:  # the previous send is still being cancelled
            assert "in sender state" in str(exc)
            await asyncio.sleep(0.1)
    assert result is not None and result.outcome.status == "received"
    assert result.outcome.offset > 0  # resumed from what the cancelled send left
    assert worker.store.object_path(sha(data)).read_bytes() == data


async def test_a_failing_progress_callback_does_not_break_the_transfer(
    start_worker: Any, client: RTCClient, local_package: Path
) -> None:
    await start_worker()
    conn = await client.connect("worker-1")

    def explode(received: int, size: int) -> None:
        raise RuntimeError("callback bug")

    result = await conn.send_file(local_package, on_progress=explode)
    assert result.outcome.status == "received"


async def test_a_refused_download_is_reported_not_awaited_forever(
    signaling: Signaling, start_worker: Any, local_package: Path, tmp_path: Path
) -> None:
    await start_worker()
    async with RTCClient(signaling.url, cache_dir=tmp_path / "c", max_file_size=10) as small:
        conn = await small.connect("worker-1")
        _, job = await conn.run_file(local_package, job_id="big-results")
        with pytest.raises(TransferFailedError) as info:
            await asyncio.wait_for(conn.download_results(job.job_id, tmp_path / "dl"), 30)
        assert info.value.code == "FILE_TOO_LARGE"


async def test_results_go_only_to_the_identity_that_ran_the_job(
    signaling: Signaling, start_worker: Any, local_package: Path, tmp_path: Path
) -> None:
    await start_worker()
    key = Identity.generate()
    async with RTCClient(signaling.url, cache_dir=tmp_path / "a", identity=key) as owner:
        conn = await owner.connect("worker-1")
        await conn.run_file(local_package, job_id="private")
    # Another identity, even with the same peer id, gets nothing.
    async with RTCClient(
        signaling.url, cache_dir=tmp_path / "b", identity=Identity.generate(), peer_id="other"
    ) as stranger:
        conn = await stranger.connect("worker-1")
        with pytest.raises(WorkerProtocolError) as info:
            await conn.download_results("private", tmp_path / "stolen", timeout=10)
        assert info.value.code == "UNKNOWN_JOB"
    assert not (tmp_path / "stolen").exists()
    # The owner, back on a new peer connection (and a new peer id), still gets them.
    async with RTCClient(
        signaling.url, cache_dir=tmp_path / "c", identity=key, peer_id="owner-again"
    ) as again:
        conn = await again.connect("worker-1")
        received, zip_path = await conn.download_results("private", tmp_path / "mine")
        assert zip_path.is_file() and received.size == zip_path.stat().st_size


async def test_a_damaged_partial_is_resent_from_the_start(
    start_worker: Any, client: RTCClient, tmp_path: Path
) -> None:
    """Bytes held for a resume that do not belong to the file fail verification once;
    the client then sends the whole file again and it verifies."""
    worker = await start_worker()
    data = big_file(tmp_path / "d.bin", 300_000, seed=13)
    key = partial_key(client.identity.fingerprint, sha(data))  # this client's own partial
    with worker.store.open_partial(key, len(data), "d.bin", sha256=sha(data)) as partial:
        partial.write(b"\x00" * 100_000)  # not the file's first bytes
    result = await (await client.connect("worker-1")).send_file(tmp_path / "d.bin")
    assert result.outcome.status == "received" and result.outcome.offset == 0
    assert worker.store.object_path(sha(data)).read_bytes() == data
