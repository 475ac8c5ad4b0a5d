"""Attacks on dedupe and on partial files, end to end: a real signaling server, a real
worker, real aiortc peers (RTCClient, or raw channels that send whatever an attacker
wants) and real files, some on a size-limited tmpfs.

Each test is written as the attacker's steps and asserts that the attacker gets
nothing: a refusal with a code, or the same answer as for content never held; and that
the victim's data is unchanged. Principals here are peer ids (each RTCClient is one),
except where a test gives a channel the key fingerprint the channel handshake sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from protocol import (
    FileExists,
    FileProof,
    FileProofRequest,
    FileReady,
    FileReceived,
    ProtocolErrorFrame,
    TransferError,
)
from protocol.identity import is_anonymous
from rtc_worker.client import RTCClient
from rtc_worker.holdings import partial_key
from rtc_worker.identity import Identity
from rtc_worker.settings import WorkerSettings
from rtc_worker.storage import free_bytes_of
from tests.conftest import (
    Signaling,
    held_partial,
    offer,
    recv_until,
    start_signaling,
    tiny_tmpfs,
)

pytestmark = pytest.mark.asyncio

MIB = 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def meta(name: str, data: bytes, chunk: int = 65536) -> str:
    return f"FILE_META::{name}::{len(data)}::{sha(data)}::{chunk}"


def secret_file(path: Path, size: int = 300_000, seed: int = 1) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


@pytest.fixture
async def attacker(signaling: Signaling, tmp_path: Path) -> AsyncIterator[RTCClient]:
    """Another lab member: its own client, so its own principal."""
    async with RTCClient(
        signaling.url, cache_dir=tmp_path / "attacker", identity=Identity.generate()
    ) as rtc_client:
        yield rtc_client


def principal(rtc_client: RTCClient) -> str:
    """The principal a worker knows ``rtc_client`` by: its key's fingerprint."""
    assert rtc_client.identity is not None
    return rtc_client.identity.fingerprint


async def session_principal(worker: Any, before: set[Any]) -> str:
    """The principal of the worker's session opened since ``before``, once it has one."""
    async with asyncio.timeout(10):
        while not (opened := worker.resources.sessions - before):
            await asyncio.sleep(0.02)
    (session,) = opened
    return str(session.conn.principal)


async def stream(conn: Any, data: bytes, start: int = 0, stop: int | None = None) -> None:
    for offset in range(start, len(data) if stop is None else stop, 65536):
        conn.send(data[offset : offset + 65536])


# ===================================================================== a digest alone


async def test_a_digest_alone_gets_no_file_exists_and_no_job(
    start_worker: Any, client: RTCClient, attacker: RTCClient, tmp_path: Path
) -> None:
    worker = await start_worker()
    victim_file = tmp_path / "victim" / "secret.bin"
    data = secret_file(victim_file)
    sent = await (await client.connect("worker-1")).send_file(victim_file)
    assert sent.outcome.status == "received"
    # The attacker saw F's sha256 somewhere and asks for it.
    raw = await attacker.connect("worker-1", raw=True)
    raw.send(meta("secret.bin", data))
    request = await raw.recv(10)
    assert isinstance(request, FileProofRequest)  # not FILE_EXISTS
    raw.send(FileProof("0" * 64))  # it cannot compute the digest of bytes it lacks
    assert await raw.recv(10) == FileReady(0)  # send the bytes, from the start
    raw.send("JOB_START")  # a job on F without them?
    refused = await raw.recv(10)
    assert isinstance(refused, ProtocolErrorFrame) and refused.code == "UNEXPECTED_MESSAGE"
    await stream(raw, bytes(len(data)))  # other bytes under F's digest do not verify
    raw.send("END_OF_FILE")
    failed = await recv_until(raw, (TransferError, FileReceived))
    assert isinstance(failed, TransferError) and failed.code == "HASH_MISMATCH"
    raw.send(meta("secret.bin", data))
    assert isinstance(await raw.recv(10), FileProofRequest)  # still nothing owned
    raw.send("FILE_CANCEL")
    await recv_until(raw, (TransferError,))
    raw.send("JOB_START")
    refused = await raw.recv(10)
    assert isinstance(refused, ProtocolErrorFrame) and refused.code == "UNEXPECTED_MESSAGE"
    assert worker.store.object_path(sha(data)).read_bytes() == data  # the victim's, intact


async def test_the_answer_to_a_digest_says_nothing_about_who_holds_it(
    start_worker: Any, client: RTCClient, attacker: RTCClient, tmp_path: Path
) -> None:
    await start_worker(proof_timeout_s=1)
    held_file = tmp_path / "victim" / "held.bin"
    held = secret_file(held_file, seed=2)
    await (await client.connect("worker-1")).send_file(held_file)
    never = random.Random(3).randbytes(len(held))  # content no one ever sent
    raw = await attacker.connect("worker-1", raw=True)
    replies: dict[str, list[object]] = {}
    for label, data in (("held", held), ("never held", never)):
        raw.send(meta("x.bin", data))
        request = await raw.recv(10)
        assert isinstance(request, FileProofRequest)
        raw.send(FileProof("f" * 64))
        ready = await raw.recv(10)
        raw.send("FILE_CANCEL")
        ack = await raw.recv(10)
        replies[label] = [
            type(request),
            [length for _, length in request.ranges],
            ready,
            ack,
        ]
        # the deadline too: an unanswered request ends the same way for both
        raw.send(meta("x.bin", data))
        assert isinstance(await raw.recv(10), FileProofRequest)
        replies[label].append(await raw.recv(5))
        raw.send("FILE_CANCEL")
        replies[label].append(await raw.recv(10))
    assert replies["held"] == replies["never held"]
    assert replies["held"][2] == FileReady(0) and replies["held"][4] == FileReady(0)


# ===================================================================== real holders


async def test_a_client_that_holds_the_bytes_proves_it_and_sends_none(
    start_worker: Any, client: RTCClient, attacker: RTCClient, tmp_path: Path
) -> None:
    worker = await start_worker()
    shared = secret_file(tmp_path / "victim" / "dataset.bin", seed=4)
    await (await client.connect("worker-1")).send_file(tmp_path / "victim" / "dataset.bin")
    copy = tmp_path / "colleague" / "dataset-copy.bin"  # really holds the same bytes
    copy.parent.mkdir()
    copy.write_bytes(shared)
    conn = await attacker.connect("worker-1")
    result = await conn.send_file(copy)
    assert (result.outcome.status, result.bytes_sent) == ("exists", 0)
    _, job = await conn.run_file(copy, job_id="colleague-1")  # proved: a job on it
    assert job.file_count == 1
    assert worker.store.object_path(sha(shared)).read_bytes() == shared


async def test_the_owner_resending_its_file_gets_file_exists_at_once(
    start_worker: Any, client: RTCClient, tmp_path: Path
) -> None:
    worker = await start_worker()
    data = secret_file(tmp_path / "own.bin", 200_000, seed=5)
    raw = await client.connect("worker-1", raw=True)  # the same connection: remembered
    assert await offer(raw, meta("own.bin", data), data) == FileReady(0)
    await stream(raw, data)
    raw.send("END_OF_FILE")
    assert await recv_until(raw, (FileReceived, TransferError)) == FileReceived(sha(data))
    raw.send(meta("own-again.bin", data))
    assert await raw.recv(10) == FileExists(sha(data))  # no proof asked
    # A key's fingerprint: recorded on disk, so a new connection needs no proof either,
    # even after the worker restarted.
    await raw.close()
    await worker.stop()
    worker = await start_worker()
    second = await client.connect("worker-1", raw=True)
    second.send(meta("own.bin", data))
    assert await second.recv(10) == FileExists(sha(data))


async def test_another_principals_partial_is_never_offered(
    start_worker: Any, client: RTCClient, attacker: RTCClient, tmp_path: Path
) -> None:
    worker = await start_worker()
    data = secret_file(tmp_path / "big.bin", 400_000, seed=7)
    victim = await client.connect("worker-1", raw=True)
    assert await offer(victim, meta("big.bin", data), data) == FileReady(0)
    await stream(victim, data, stop=196_608)
    victim.send("FILE_CANCEL")  # the victim's partial is kept for its resume
    await recv_until(victim, (TransferError,))
    assert held_partial(worker.store, principal(client), data) == 196_608
    raw = await attacker.connect("worker-1", raw=True)
    raw.send(meta("big.bin", data))
    assert isinstance(await raw.recv(10), FileProofRequest)
    raw.send(FileProof("1" * 64))
    assert await raw.recv(10) == FileReady(0)  # never the victim's 196608
    await stream(raw, b"\xff" * len(data), stop=65536)  # its bytes go to its own partial
    raw.send("FILE_CANCEL")
    await recv_until(raw, (TransferError,))
    assert held_partial(worker.store, principal(client), data) == 196_608  # untouched
    victim.send(meta("big.bin", data))
    assert await victim.recv(10) == FileReady(196_608)  # the victim resumes its own


# ===================================================================== quotas and expiry


async def test_abandoned_partials_hit_their_principals_quota_only_and_expire(
    start_worker: Any, client: RTCClient, attacker: RTCClient, tmp_path: Path
) -> None:
    worker = await start_worker(
        partial_quota_files=2,
        partial_quota_bytes=2 * MIB,
        partial_ttl_s=2,
        cleanup_interval_s=0.5,
    )
    raw = await attacker.connect("worker-1", raw=True)
    for seed in (10, 11):  # two uploads abandoned halfway
        data = random.Random(seed).randbytes(300_000)
        assert await offer(raw, meta(f"{seed}.bin", data), data) == FileReady(0)
        await stream(raw, data, stop=131_072)
        raw.send("FILE_CANCEL")
        await recv_until(raw, (TransferError,))
    third = random.Random(12).randbytes(300_000)
    raw.send(meta("12.bin", third))
    refused = await raw.recv(10)
    assert isinstance(refused, TransferError) and refused.code == "QUOTA_EXCEEDED"
    huge = f"FILE_META::huge.bin::{3 * MIB}::{sha(b'huge')}::65536"
    raw.send(huge)  # above the bytes on its own
    refused = await raw.recv(10)
    assert isinstance(refused, TransferError) and refused.code == "QUOTA_EXCEEDED"
    # Another principal is not affected.
    victim = await client.connect("worker-1", raw=True)
    assert await offer(victim, meta("12.bin", third), third) == FileReady(0)
    victim.send("FILE_CANCEL")
    await recv_until(victim, (TransferError,))
    # Expiry frees the attacker's quota (and its disk space).
    abandoned = [random.Random(seed).randbytes(300_000) for seed in (10, 11)]
    async with asyncio.timeout(15):
        while any(held_partial(worker.store, principal(attacker), d) for d in abandoned):
            await asyncio.sleep(0.2)
    assert await offer(raw, meta("12.bin", third), third) == FileReady(0)


async def test_an_anonymous_connections_partials_go_with_it(
    start_worker: Any, tmp_path: Path
) -> None:
    open_door = await start_signaling(allow_anonymous_clients=True)
    try:
        worker = await start_worker(signaling_url=open_door.url, allow_anonymous_clients=True)
        async with RTCClient(open_door.url, anonymous=True, cache_dir=tmp_path / "a") as anon:
            await anonymous_partial_goes_with_its_connection(worker, anon)
    finally:
        await open_door.runner.cleanup()


async def anonymous_partial_goes_with_its_connection(worker: Any, anon: RTCClient) -> None:
    before = set(worker.resources.sessions)
    raw = await anon.connect("worker-1", raw=True)
    data = random.Random(13).randbytes(2 * MIB)
    assert await offer(raw, meta("a.bin", data), data) == FileReady(0)
    principal = await session_principal(worker, before)
    assert is_anonymous(principal)
    await stream(raw, data, stop=MIB + 65536)
    key = partial_key(principal, sha(data))
    async with asyncio.timeout(10):
        while worker.store.partial_size(key, len(data), sha256=sha(data)) < MIB:
            await asyncio.sleep(0.05)
    await raw.close()  # nobody can resume it: the next connection is a new principal
    async with asyncio.timeout(10):
        while key in worker.store.partial_keys():
            await asyncio.sleep(0.05)
    assert worker.store.total_partial_bytes() == 0


async def test_a_proof_never_answered_ends_in_file_ready_after_the_deadline(
    start_worker: Any, attacker: RTCClient
) -> None:
    await start_worker(proof_timeout_s=0.5)
    raw = await attacker.connect("worker-1", raw=True)
    data = b"content" * 1000
    raw.send(meta("c.bin", data))
    assert isinstance(await raw.recv(10), FileProofRequest)
    assert await raw.recv(5) == FileReady(0)  # not kept waiting
    raw.send(FileProof(sha(data)))  # too late: refused, nothing changes
    late = await raw.recv(10)
    assert isinstance(late, ProtocolErrorFrame) and late.code == "UNEXPECTED_MESSAGE"
    await stream(raw, data)
    raw.send("END_OF_FILE")
    assert await recv_until(raw, (FileReceived, TransferError)) == FileReceived(sha(data))


# ===================================================================== a full disk


@contextlib.asynccontextmanager
async def worker_on(signaling: Signaling, data_dir: Path, **overrides: Any) -> AsyncIterator[Any]:
    """A worker whose data (and store) live in ``data_dir``, stopped on the way out (so
    a tmpfs under it can be unmounted)."""
    from rtc_worker.worker import RTCWorkerClient

    settings = WorkerSettings(
        signaling_url=signaling.url,
        peer_id="disk-worker",
        shared_root_candidates=[],
        data_dir=data_dir,
        reconnect_max_delay_s=0.5,
        **overrides,
    )
    worker = RTCWorkerClient(settings)
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            await worker.registered.wait()
        yield worker
    finally:
        await worker.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 15)


async def test_a_transfer_is_refused_before_the_disk_fills(
    signaling: Signaling, attacker: RTCClient, tmp_path: Path
) -> None:
    with tiny_tmpfs(tmp_path / "disk", size="16m") as disk:
        async with worker_on(signaling, disk / "data", free_space_reserve_bytes=4 * MIB) as worker:
            raw = await attacker.connect("disk-worker", raw=True)
            too_big = random.Random(20).randbytes(14 * MIB)  # 16 MiB disk, 4 MiB reserve
            raw.send(meta("big.bin", too_big))
            refused = await raw.recv(10)
            assert isinstance(refused, TransferError) and refused.code == "DISK_FULL"
            assert worker.store.total_partial_bytes() == 0  # nothing was written
            # It fits when it opens; then something else takes the space (a job, another
            # worker): the writes stop at the reserve, not at the end of the disk.
            data = random.Random(21).randbytes(6 * MIB)
            assert await offer(raw, meta("fits.bin", data), data) == FileReady(0)
            filler = disk / "filler"
            filler.write_bytes(bytes(free_bytes_of(disk) - 4 * MIB - 2 * MIB))
            await stream(raw, data)
            raw.send("END_OF_FILE")
            failed = await recv_until(raw, (TransferError, FileReceived))
            assert isinstance(failed, TransferError) and failed.code == "DISK_FULL"
            assert free_bytes_of(disk) >= 4 * MIB - 64 * 1024  # the reserve held
            raw.send("PING")  # the worker keeps serving
            assert (await recv_until(raw, (ProtocolErrorFrame,))).code == "UNKNOWN_MESSAGE"
            filler.unlink()
            await raw.close()


async def test_file_cancel_on_a_full_disk_is_acknowledged_and_the_worker_serves_on(
    signaling: Signaling, client: RTCClient, tmp_path: Path
) -> None:
    with tiny_tmpfs(tmp_path / "disk", size="8m") as disk:
        async with worker_on(signaling, disk / "data", free_space_reserve_bytes=0) as worker:
            raw = await client.connect("disk-worker", raw=True)
            data = random.Random(30).randbytes(4 * MIB)
            assert await offer(raw, meta("full.bin", data), data) == FileReady(0)
            filler = disk / "filler"  # the disk fills up under the transfer
            filler.write_bytes(bytes(free_bytes_of(disk) - 512 * 1024))
            await stream(raw, data, stop=3 * MIB)
            raw.send("FILE_CANCEL")
            replies: list[object] = []
            async with asyncio.timeout(20):
                while not (
                    replies
                    and isinstance(replies[-1], TransferError)
                    and replies[-1].code == "CANCELLED"
                ):
                    replies.append(await raw.recv(20))
            assert not [r for r in replies if isinstance(r, ProtocolErrorFrame)], replies
            codes = [r.code for r in replies if isinstance(r, TransferError)]
            assert codes[-1] == "CANCELLED" and set(codes) <= {"DISK_FULL", "CANCELLED"}
            raw.send("FILE_CANCEL")  # again: no transfer open, acknowledged all the same
            assert await raw.recv(10) == TransferError("CANCELLED", "no transfer open")
            # The worker keeps serving: space back, the same client resumes and finishes.
            filler.unlink()
            kept = held_partial(worker.store, principal(client), data)
            assert await offer(raw, meta("full.bin", data), data) == FileReady(kept)
            await stream(raw, data, start=kept)
            raw.send("END_OF_FILE")
            done = await recv_until(raw, (FileReceived, TransferError))
            assert done == FileReceived(sha(data))
            local = tmp_path / "local" / "full.bin"
            local.parent.mkdir()
            local.write_bytes(data)
            conn = await client.connect("disk-worker")
            _, job = await conn.run_file(local)  # and runs a job on it
            assert job.file_count == 1
            assert os.path.exists(worker.store.object_path(sha(data)))
            await raw.close()
            await conn.close()
