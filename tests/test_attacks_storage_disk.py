"""Attacks on the storage service's disk, as the attacker's steps: abandoned partial
uploads against the quota, one principal trying to fill the shared disk, and a disk
that something else filled (every route must still answer JSON with a code, and reads
and deletes must still work so space can be freed).

A real server on loopback, real SQLite and files; the disk tests run on a small tmpfs
mounted for the test (skipped with the reason where mounting is not allowed) and
always unmounted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from signaling.app import start_server
from signaling.disk_space import free_bytes
from signaling.keys import Role
from tests.conftest import StartService, tiny_tmpfs
from tests.storage_service import KEY, Answer, StorageService, fingerprint_of, service_settings

VICTIM = fingerprint_of("victim")
ATTACKER = fingerprint_of("attacker")
MiB = 1024 * 1024


def payload(size: int, seed: int) -> bytes:
    block = hashlib.sha256(f"{seed}".encode()).digest() * 2048  # 64 KiB, not compressible
    return (block * (size // len(block) + 1))[:size]


async def init(service: StorageService, key: str, size: int) -> Answer:
    body = {"file_name": "part.bin", "total_size": size, "user_id": "u", "user_role": "r"}
    return await service.request("POST", "/api/upload/init", key=key, body=body)


async def put_chunk(
    service: StorageService, key: str, upload_id: str, index: int, data: bytes
) -> Answer:
    headers = {"X-Upload-Id": upload_id, "X-Chunk-Index": str(index)}
    return await service.request("PUT", "/api/upload/chunk", key=key, headers=headers, data=data)


async def resumable(service: StorageService, key: str, content: bytes, chunk: int) -> Answer:
    """A whole resumable upload; the completion's answer."""
    started = await init(service, key, len(content))
    assert started.status == 201, started
    upload_id = started.body["upload_id"]
    for index in range(-(-len(content) // chunk)):
        sent = await put_chunk(
            service, key, upload_id, index, content[index * chunk : (index + 1) * chunk]
        )
        assert sent.status == 200, sent
    return await service.request(
        "POST", "/api/upload/complete", key=key, body={"upload_id": upload_id}
    )


# ------------------------------------------------------------------ quota and expiry


async def test_abandoned_partials_hit_the_quota_and_expire(
    start_storage_service: StartService,
) -> None:
    service = await start_storage_service(
        upload_chunk_size=1024,
        upload_quota_count=3,
        upload_quota_bytes=48 * 1024,
        upload_ttl_s=2,
        cleanup_interval_s=0.2,
    )
    attacker = await service.make_key(Role.CLIENT, "attacker", ATTACKER)
    victim = await service.make_key(Role.CLIENT, "victim", VICTIM)
    other = await service.make_key(Role.CLIENT, "other", fingerprint_of("other"))
    abandoned = []
    for _ in range(3):  # the attacker starts uploads and walks away from them
        started = await init(service, attacker, 16 * 1024)
        assert started.status == 201, started
        abandoned.append(started.body["upload_id"])
        assert (await put_chunk(service, attacker, abandoned[-1], 0, b"x" * 1024)).status == 200
    refused = await init(service, attacker, 1)
    assert (refused.status, refused.code) == (413, "QUOTA_EXCEEDED")
    # the byte quota: announced sizes of open uploads
    first = await init(service, other, 40 * 1024)
    assert first.status == 201
    refused = await init(service, other, 9 * 1024)
    assert (refused.status, refused.code) == (413, "QUOTA_EXCEEDED")
    # the victim is not affected
    done = await resumable(service, victim, payload(5000, 1), 1024)
    assert (done.status, done.body["status"]) == (200, "completed")
    # the abandoned uploads expire and are removed, partial files (or objects) included:
    # the record goes first, then what the blob store holds
    async with asyncio.timeout(10):
        for upload_id in abandoned:
            path = f"/api/upload/{upload_id}/status"
            while (await service.request("GET", path, key=KEY)).code != "UPLOAD_NOT_FOUND":
                await asyncio.sleep(0.1)
        while any(name.startswith(tuple(abandoned)) for name in service.partials()):
            await asyncio.sleep(0.1)
    assert (await init(service, attacker, 16 * 1024)).status == 201


# ------------------------------------------------------------------ a small disk


@asynccontextmanager
async def service_on_tmpfs(
    tmp_path: Path, size: str, **settings: Any
) -> AsyncIterator[StorageService]:
    """A storage service whose folder is on a fresh tmpfs of ``size``."""
    with tiny_tmpfs(tmp_path / "mnt", size=size) as mnt:
        root = mnt / "store"
        runner, port = await start_server(service_settings(root, **settings))
        try:
            async with aiohttp.ClientSession() as session:
                service = StorageService(root, session, runner, port, settings)
                try:
                    yield service
                finally:
                    await service.stop()  # the server and the helper's database connections
        finally:
            await runner.cleanup()


def fill(folder: Path) -> Path:
    """Fill the disk of ``folder`` up to its last byte with a file (as another program
    sharing the disk would); the file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for block in (1 << 20, 1 << 16, 1 << 12, 1):
            data = bytes(block)
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, data)
    finally:
        os.close(fd)
    assert free_bytes(folder) < 4096
    with contextlib.suppress(OSError), open(folder / "probe", "wb") as probe:
        probe.write(b"x" * 4096)
        probe.flush()
        os.fsync(probe.fileno())
        raise AssertionError("the disk is not full")
    return filler


def truncate_wal(database: Path) -> None:
    """Checkpoint the database and truncate its WAL to zero bytes, so the next write
    needs new disk space (what a quiet server's WAL looks like after a checkpoint)."""
    conn = sqlite3.connect(database)
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0
    finally:
        conn.close()
    assert (database.parent / (database.name + "-wal")).stat().st_size == 0


async def test_one_principal_cannot_fill_the_shared_disk(tmp_path: Path) -> None:
    reserve = 4 * MiB
    async with service_on_tmpfs(
        tmp_path,
        "16m",
        disk_reserve_bytes=reserve,
        database_reserve_bytes=256 * 1024,
        upload_chunk_size=256 * 1024,
        storage_max_file_size=64 * MiB,
        upload_quota_bytes=6 * MiB,
        upload_quota_count=100,
    ) as service:
        attacker = await service.make_key(Role.CLIENT, "attacker", ATTACKER)
        victim = await service.make_key(Role.CLIENT, "victim", VICTIM)
        rogue = await service.make_key(Role.WORKER, "rogue")
        worker = await service.make_key(Role.WORKER, "gpu-1")
        # the attacker's abandoned partial uploads stop at its quota...
        refusal = None
        for _ in range(10):
            started = await init(service, attacker, 2 * MiB)
            if started.status != 201:
                refusal = started
                break
            for index in range(8):
                chunk = payload(256 * 1024, index)
                sent = await put_chunk(service, attacker, started.body["upload_id"], index, chunk)
                assert sent.status == 200, sent
        assert refusal is not None and (refusal.status, refusal.code) == (413, "QUOTA_EXCEEDED")
        # ... a rogue worker streaming without a length stops at the disk reserve...
        lowest = free_bytes(service.root)
        stop = asyncio.Event()

        async def watch() -> None:
            nonlocal lowest
            while not stop.is_set():
                lowest = min(lowest, free_bytes(service.root))
                await asyncio.sleep(0.002)

        async def endless() -> AsyncIterator[bytes]:
            for index in range(64):
                yield payload(MiB, index)

        watcher = asyncio.create_task(watch())
        try:
            headers = {"X-Job-Id": "flood", "X-Owner": ATTACKER}
            flood = await service.request(
                "POST", "/upload", key=rogue, headers=headers, data=endless()
            )
            assert (flood.status, flood.code) == (507, "DISK_FULL")
        finally:
            stop.set()
            await watcher
        assert lowest >= reserve - 2 * MiB, lowest  # at most one write batch below it
        # ... and one announcing its length is refused before its body is read
        reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
        writer.write(
            f"POST /upload HTTP/1.1\r\nHost: x\r\nX-API-Key: {rogue}\r\nX-Job-Id: flood\r\n"
            f"X-Owner: {ATTACKER}\r\nContent-Length: {60 * MiB}\r\n\r\n".encode()
            + payload(4096, 9)
        )
        head = await reader.readuntil(b"\r\n\r\n")  # answered with the body unread
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
        writer.close()
        assert head.startswith(b"HTTP/1.1 507 ") and b"Connection: close" in head
        assert json.loads(body)["error"]["code"] == "DISK_FULL"
        assert free_bytes(service.root) >= reserve
        # the victim still stores and gets its results
        result = payload(MiB, 42)
        stored = await service.store_result(worker, VICTIM, "run7", result)
        assert stored.status == 201, stored
        got = await service.request("GET", "/download/run7?keep=true", key=victim)
        assert (got.status, got.body) == (200, result)


async def test_a_full_disk_answers_json_and_space_can_be_freed(tmp_path: Path) -> None:
    async with service_on_tmpfs(
        tmp_path,
        "8m",
        disk_reserve_bytes=0,  # nothing held back: the disk really fills
        database_reserve_bytes=512 * 1024,
        upload_chunk_size=64 * 1024,
    ) as service:
        victim = await service.make_key(Role.CLIENT, "victim", VICTIM)
        worker = await service.make_key(Role.WORKER, "gpu-1")
        run7, run8 = payload(MiB, 7), payload(MiB, 8)
        assert (await service.store_result(worker, VICTIM, "run7", run7)).status == 201
        assert (await service.store_result(worker, VICTIM, "run8", run8)).status == 201
        upload_id = (await init(service, victim, 128 * 1024)).body["upload_id"]
        assert (await put_chunk(service, victim, upload_id, 0, payload(65536, 1))).status == 200
        reserve_file = service.root / "storage.db.reserve"
        first_reserve = reserve_file.stat().st_ino
        truncate_wal(service.root / "storage.db")
        fill(service.root.parent)
        # writes are refused with a code, never a plain-text 500
        for answer in (
            await service.store_result(worker, VICTIM, "run9", payload(300 * 1024, 9)),
            await init(service, victim, 1000),
            await put_chunk(service, victim, upload_id, 1, payload(65536, 2)),
        ):
            assert (answer.status, answer.code) == (507, "DISK_FULL"), answer
        unknown = await service.request("GET", "/download/run7/..", key=victim)
        assert (unknown.status, unknown.code) == (404, "NOT_FOUND")
        # reads work
        listing = await service.request("GET", "/list", key=victim)
        assert sorted(f["job_id"] for f in listing.body["files"]) == ["run7", "run8"]
        head = await service.request("HEAD", "/download/run7", key=victim)
        assert head.status == 200
        got = await service.request("GET", "/download/run7?keep=true", key=victim)
        assert (got.status, got.body) == (200, run7)
        status = await service.request("GET", f"/api/upload/{upload_id}/status", key=victim)
        assert (status.status, status.body["missing_chunks"]) == (200, [1])
        # deletes work and free space
        before = free_bytes(service.root)
        deleted = await service.request("DELETE", "/delete/run7", key=victim)
        assert (deleted.status, deleted.body) == (200, {"job_id": "run7", "deleted": True})
        assert free_bytes(service.root) > before
        # SQLite had no room for the delete: the reserve file was given up for it
        assert not reserve_file.exists() or reserve_file.stat().st_ino != first_reserve
        # the owner's download deletes too, and a cancel frees its partial
        got = await service.request("GET", "/download/run8", key=victim)
        assert (got.status, got.body) == (200, run8)
        await service.wait_status("run8", 410)
        cancelled = await service.request(
            "POST", "/api/upload/cancel", key=victim, body={"upload_id": upload_id}
        )
        assert (cancelled.status, cancelled.body["status"]) == (200, "cancelled")
        assert service.blobs() == []


async def test_without_the_database_reserve_a_full_disk_refuses_deletes_with_json(
    tmp_path: Path,
) -> None:
    """The same full disk without the reserve file: SQLite has no room to record the
    delete (what the reserve file is for); the answer is still JSON with a code, reads
    still work, and the delete works once the disk has room again."""
    async with service_on_tmpfs(
        tmp_path, "8m", disk_reserve_bytes=0, database_reserve_bytes=0
    ) as service:
        victim = await service.make_key(Role.CLIENT, "victim", VICTIM)
        worker = await service.make_key(Role.WORKER, "gpu-1")
        run7 = payload(MiB, 7)
        assert (await service.store_result(worker, VICTIM, "run7", run7)).status == 201
        truncate_wal(service.root / "storage.db")
        filler = fill(service.root.parent)
        refused = await service.request("DELETE", "/delete/run7", key=victim)
        assert (refused.status, refused.code) == (507, "DISK_FULL")
        got = await service.request("GET", "/download/run7?keep=true", key=victim)
        assert (got.status, got.body) == (200, run7)
        filler.unlink()
        deleted = await service.request("DELETE", "/delete/run7", key=victim)
        assert (deleted.status, deleted.body["deleted"]) == (200, True)
