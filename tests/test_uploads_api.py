"""Resumable chunked uploads: a real server on loopback, real HTTP, SQLite and disk."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from rtc_worker.storage import format_timestamp
from signaling.app import start_server
from signaling.config import SignalingSettings
from signaling.uploads_api import UPLOADS_KEY
from tests.conftest import StartService
from tests.engine_s3 import FAKE_CREDENTIALS
from tests.storage_service import AUTH, KEY, StorageService, service_settings

CHUNK = 1024
MAX_SIZE = 64 * 1024
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
    b"\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00"
    b"\x00\x00\x00IEND\xaeB`\x82"
)


def make_settings(root: Path, **extra: Any) -> SignalingSettings:
    return service_settings(root, storage_max_file_size=MAX_SIZE, upload_chunk_size=CHUNK, **extra)


def payload(size: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(size))


class Server(StorageService):
    """The storage service, with the resumable-upload steps of these tests."""

    async def init(self, size: int, name: str = "file.bin", **extra: Any) -> str:
        body = {
            "file_name": name,
            "total_size": size,
            "user_id": "u1",
            "user_role": "client",
            "content_type": "application/octet-stream",
            **extra,
        }
        status, answer = await self.call("POST", "/api/upload/init", body)
        assert status == 201, answer
        assert answer["status"] == "initiated"
        assert answer["chunk_size"] == CHUNK
        return str(answer["upload_id"])

    async def chunk(self, upload_id: str, index: int, data: bytes) -> tuple[int, dict[str, Any]]:
        headers = {**AUTH, "X-Upload-Id": upload_id, "X-Chunk-Index": str(index)}
        return await self.call("PUT", "/api/upload/chunk", headers=headers, data=data)

    async def send(self, upload_id: str, content: bytes, only: list[int] | None = None) -> None:
        count = -(-len(content) // CHUNK)
        for index in range(count) if only is None else only:
            status, answer = await self.chunk(
                upload_id, index, content[index * CHUNK : (index + 1) * CHUNK]
            )
            assert status == 200, answer
            assert answer == {"upload_id": upload_id, "chunk_index": index, "status": "uploaded"}

    async def complete(self, upload_id: str) -> tuple[int, dict[str, Any]]:
        return await self.call("POST", "/api/upload/complete", {"upload_id": upload_id})

    async def status(self, upload_id: str) -> tuple[int, dict[str, Any]]:
        return await self.call("GET", f"/api/upload/{upload_id}/status")

    async def resumable_upload(
        self, content: bytes, name: str = "file.bin", **extra: Any
    ) -> dict[str, Any]:
        upload_id = await self.init(len(content), name, **extra)
        await self.send(upload_id, content)
        status, answer = await self.complete(upload_id)
        assert status == 200, answer
        return answer

    def partial(self, upload_id: str) -> list[str]:
        """What the upload's partial leaves in the blob store (files or objects)."""
        return self.partials(upload_id)


@pytest_asyncio.fixture
async def server(start_storage_service: StartService) -> Server:
    service: Server = await start_storage_service(
        Server, storage_max_file_size=MAX_SIZE, upload_chunk_size=CHUNK
    )
    return service


def code(body: dict[str, Any]) -> str:
    assert set(body["error"]) == {"code", "message", "timestamp"}
    return str(body["error"]["code"])


def today() -> str:
    return datetime.now(UTC).strftime("%Y%m%d")


async def test_round_trip_png_is_an_image(server: Server) -> None:
    content = PNG + payload(3 * CHUNK - len(PNG) + 100)  # 4 chunks, the last short
    answer = await server.resumable_upload(content, "photo.png")
    digest = hashlib.sha256(content).hexdigest()
    assert answer["status"] == "completed"
    assert answer["sha256"] == digest
    assert answer["key"] == f"client/u1/{today()}/image/photo.png"
    assert server.blob_bytes(digest) == content
    status, body = await server.status(answer["upload_id"])
    assert status == 200
    assert body["status"] == "completed"
    assert body["chunks_uploaded"] == 4
    assert body["missing_chunks"] == []
    assert body["key"] == answer["key"]
    assert server.partial(answer["upload_id"]) == []  # committed: nothing left behind


async def test_category_falls_back_to_content_type(server: Server) -> None:
    answer = await server.resumable_upload(
        payload(100), "clip.mp4", content_type="video/mp4"
    )  # bytes magic cannot name
    assert answer["key"] == f"client/u1/{today()}/video/clip.mp4"
    text = await server.resumable_upload(b"hello, plain text\n" * 10, "notes.txt")
    assert text["key"] == f"client/u1/{today()}/document/notes.txt"


async def test_resend_chunk_and_status_with_missing(server: Server) -> None:
    content = payload(5 * CHUNK)
    upload_id = await server.init(len(content))
    status, body = await server.status(upload_id)
    assert body["status"] == "initiated"
    assert body["missing_chunks"] == [0, 1, 2, 3, 4]
    await server.send(upload_id, content, only=[0, 3])
    await server.chunk(upload_id, 3, b"\xff" * CHUNK)  # wrong bytes first...
    await server.send(upload_id, content, only=[3])  # ...replaced by the right ones
    status, body = await server.status(upload_id)
    assert status == 200
    assert body["status"] == "in_progress"
    assert body["chunks_uploaded"] == 2
    assert body["missing_chunks"] == [1, 2, 4]
    assert body["file_name"] == "file.bin"
    assert body["total_size"] == len(content)
    assert body["created_at"] <= body["updated_at"]
    status, error = await server.complete(upload_id)
    assert status == 400 and code(error) == "INVALID_FIELD"
    assert "1, 2, 4" in error["error"]["message"]
    await server.send(upload_id, content, only=[1, 2, 4])
    status, answer = await server.complete(upload_id)
    assert status == 200
    assert server.blob_bytes(answer["sha256"]) == content


async def test_resume_after_restart(server: Server) -> None:
    content = payload(4 * CHUNK + 10, seed=3)
    upload_id = await server.init(len(content))
    await server.send(upload_id, content, only=[0, 2])
    await server.restart()
    status, body = await server.status(upload_id)
    assert status == 200
    assert body["missing_chunks"] == [1, 3, 4]
    await server.send(upload_id, content, only=[1, 3, 4])
    status, answer = await server.complete(upload_id)
    assert status == 200
    assert answer["sha256"] == hashlib.sha256(content).hexdigest()
    assert server.blob_bytes(answer["sha256"]) == content


async def test_chunks_of_one_upload_sent_at_once(server: Server) -> None:
    content = payload(6 * CHUNK + 99, seed=4)
    upload_id = await server.init(len(content))
    order = [6, 2, 0, 5, 1, 3, 4]
    results = await asyncio.gather(
        *(server.chunk(upload_id, i, content[i * CHUNK : (i + 1) * CHUNK]) for i in order)
    )
    assert [status for status, _ in results] == [200] * len(order)
    assert await server.held(upload_id) == [[0, len(content)]]
    status, answer = await server.complete(upload_id)
    assert status == 200 and answer["sha256"] == hashlib.sha256(content).hexdigest()


async def test_chunk_folders_of_an_earlier_version_are_migrated(server: Server) -> None:
    """Before the one file layer each chunk was a file ``uploads/<id>/<index>``: a
    restarted server moves them into the upload's partial at their offsets."""
    if server.bucket is not None:
        pytest.skip("old chunk folders are moved into partials of the folder backend only")
    content = payload(4 * CHUNK + 7, seed=6)
    upload_id = await server.init(len(content))
    await server.runner.cleanup()
    folder = server.root / "uploads" / upload_id
    folder.mkdir(parents=True)
    for index in (0, 3, 4):
        (folder / str(index)).write_bytes(content[index * CHUNK : (index + 1) * CHUNK])
    (folder / "2").write_bytes(b"short")  # a chunk of the wrong length: not held
    (folder / ".1.abc123.part").write_bytes(b"an unfinished temporary file")
    (server.root / "tmp").mkdir()
    (server.root / "tmp" / "upload-x").write_bytes(b"left by a crash")
    await server.restart()
    assert not (server.root / "uploads").exists() and not (server.root / "tmp").exists()
    status, body = await server.status(upload_id)
    assert (status, body["missing_chunks"], body["chunks_uploaded"]) == (200, [1, 2], 3)
    await server.send(upload_id, content, only=[1, 2])
    status, answer = await server.complete(upload_id)
    assert status == 200
    assert server.blob_bytes(answer["sha256"]) == content


async def test_concurrent_uploads(server: Server) -> None:
    first, second = payload(6 * CHUNK, seed=1), payload(7 * CHUNK + 3, seed=2)
    a, b = await asyncio.gather(
        server.resumable_upload(first, "a.bin"), server.resumable_upload(second, "b.bin")
    )
    assert server.blob_bytes(a["sha256"]) == first
    assert server.blob_bytes(b["sha256"]) == second
    assert len(server.blobs()) == 2


async def test_dedupe_and_key_collision(server: Server) -> None:
    content = payload(2 * CHUNK + 5, seed=9)
    first = await server.resumable_upload(content, "report.tar.gz")
    second = await server.resumable_upload(content, "report.tar.gz")
    third = await server.resumable_upload(content, "report.tar.gz")
    assert first["sha256"] == second["sha256"]
    assert len(server.blobs()) == 1
    base = f"client/u1/{today()}/other"
    assert first["key"] == f"{base}/report.tar.gz"
    assert second["key"] == f"{base}/report.tar-1.gz"
    assert third["key"] == f"{base}/report.tar-2.gz"
    # the blob survives a restart (its startup sweep keeps referenced blobs)
    await server.restart()
    assert server.blob_bytes(first["sha256"]) == content


async def test_empty_file(server: Server) -> None:
    answer = await server.resumable_upload(b"", "empty.dat")
    assert answer["sha256"] == hashlib.sha256(b"").hexdigest()


BAD_INIT = [
    ({"total_size": 1, "user_id": "u", "user_role": "r"}, 400, "MISSING_FIELD"),
    ({"file_name": "a", "user_id": "u", "user_role": "r"}, 400, "MISSING_FIELD"),
    ({"file_name": "a", "total_size": 1, "user_role": "r"}, 400, "MISSING_FIELD"),
    ({"file_name": "a", "total_size": 1, "user_id": "u"}, 400, "MISSING_FIELD"),
    (
        {"file_name": "../a", "total_size": 1, "user_id": "u", "user_role": "r"},
        400,
        "INVALID_FIELD",
    ),
    ({"file_name": "a/b", "total_size": 1, "user_id": "u", "user_role": "r"}, 400, "INVALID_FIELD"),
    ({"file_name": "..", "total_size": 1, "user_id": "u", "user_role": "r"}, 400, "INVALID_FIELD"),
    ({"file_name": "a", "total_size": 1, "user_id": "u/v", "user_role": "r"}, 400, "INVALID_FIELD"),
    ({"file_name": "a", "total_size": 1, "user_id": "..", "user_role": "r"}, 400, "INVALID_FIELD"),
    (
        {"file_name": "a", "total_size": 1, "user_id": "u", "user_role": "r" * 65},
        400,
        "INVALID_FIELD",
    ),
    ({"file_name": "a", "total_size": -1, "user_id": "u", "user_role": "r"}, 400, "INVALID_FIELD"),
    ({"file_name": "a", "total_size": "9", "user_id": "u", "user_role": "r"}, 400, "INVALID_FIELD"),
    (
        {"file_name": "a", "total_size": 1, "user_id": "u", "user_role": "r", "content_type": "x"},
        400,
        "INVALID_FIELD",
    ),
    (
        {"file_name": "a", "total_size": MAX_SIZE + 1, "user_id": "u", "user_role": "r"},
        413,
        "FILE_TOO_LARGE",
    ),
    ([1, 2], 400, "INVALID_FIELD"),
]


@pytest.mark.parametrize(("body", "status", "error"), BAD_INIT)
async def test_init_errors(server: Server, body: Any, status: int, error: str) -> None:
    got, answer = await server.call("POST", "/api/upload/init", body)
    assert got == status
    assert code(answer) == error


async def test_chunk_and_complete_errors(server: Server) -> None:
    upload_id = await server.init(2 * CHUNK + 1)
    unknown = "0" * 32
    cases: list[tuple[dict[str, str], bytes, int, str]] = [
        ({"X-Chunk-Index": "0"}, b"x", 400, "MISSING_FIELD"),
        ({"X-Upload-Id": upload_id}, b"x", 400, "MISSING_FIELD"),
        ({"X-Upload-Id": upload_id, "X-Chunk-Index": "-1"}, b"x", 400, "INVALID_FIELD"),
        ({"X-Upload-Id": upload_id, "X-Chunk-Index": "3"}, b"x", 400, "INVALID_FIELD"),
        ({"X-Upload-Id": upload_id, "X-Chunk-Index": "0"}, b"x" * 10, 400, "INVALID_FIELD"),
        ({"X-Upload-Id": upload_id, "X-Chunk-Index": "2"}, b"xy", 400, "INVALID_FIELD"),
        ({"X-Upload-Id": "nothex", "X-Chunk-Index": "0"}, b"x", 400, "INVALID_FIELD"),
        ({"X-Upload-Id": unknown, "X-Chunk-Index": "0"}, b"x", 404, "UPLOAD_NOT_FOUND"),
    ]
    for headers, data, status, error in cases:
        got, answer = await server.call(
            "PUT", "/api/upload/chunk", headers={**AUTH, **headers}, data=data
        )
        assert (got, code(answer)) == (status, error), headers
    assert await server.held(upload_id) == []  # refused chunks are never recorded
    status, answer = await server.call("POST", "/api/upload/complete", {})
    assert (status, code(answer)) == (400, "MISSING_FIELD")
    status, answer = await server.complete(unknown)
    assert (status, code(answer)) == (404, "UPLOAD_NOT_FOUND")
    status, answer = await server.status(unknown)
    assert (status, code(answer)) == (404, "UPLOAD_NOT_FOUND")
    status, answer = await server.call("POST", "/api/upload/cancel", {"upload_id": unknown})
    assert (status, code(answer)) == (404, "UPLOAD_NOT_FOUND")


async def test_completed_upload_refuses_changes(server: Server) -> None:
    answer = await server.resumable_upload(payload(CHUNK + 1), "x.bin")
    upload_id = answer["upload_id"]
    status, error = await server.chunk(upload_id, 0, payload(CHUNK))
    assert (status, code(error)) == (409, "UPLOAD_COMPLETED")
    status, error = await server.complete(upload_id)
    assert (status, code(error)) == (409, "UPLOAD_COMPLETED")
    status, error = await server.call("POST", "/api/upload/cancel", {"upload_id": upload_id})
    assert (status, code(error)) == (409, "UPLOAD_COMPLETED")


ROUTES = [
    ("POST", "/api/upload/init"),
    ("PUT", "/api/upload/chunk"),
    ("POST", "/api/upload/complete"),
    ("GET", "/api/upload/" + "0" * 32 + "/status"),
    ("POST", "/api/upload/cancel"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_route_needs_the_key(server: Server, method: str, path: str) -> None:
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
        status, answer = await server.call(method, path, {"upload_id": "0" * 32}, headers)
        assert (status, code(answer)) == (401, "UNAUTHORIZED")
    status, _ = await server.call(
        method, path, {"upload_id": "0" * 32}, {"Authorization": f"Bearer {KEY}"}
    )
    assert status != 401


async def test_cancel_removes_chunks(server: Server) -> None:
    content = payload(3 * CHUNK)
    upload_id = await server.init(len(content))
    await server.send(upload_id, content, only=[0, 1])
    assert await server.held(upload_id) == [[0, 2 * CHUNK]]
    status, answer = await server.call("POST", "/api/upload/cancel", {"upload_id": upload_id})
    assert status == 200
    assert answer == {"upload_id": upload_id, "status": "cancelled"}
    assert server.partial(upload_id) == []
    status, body = await server.status(upload_id)
    assert body["status"] == "cancelled"
    assert body["chunks_uploaded"] == 0
    status, error = await server.chunk(upload_id, 2, content[2 * CHUNK :])
    assert (status, code(error)) == (404, "UPLOAD_NOT_FOUND")


async def age(server: Server, upload_id: str, hours: float) -> None:
    old = format_timestamp(datetime.now(UTC) - timedelta(hours=hours))
    await server.db.set_upload_times(upload_id, old, old)


async def test_cleanup_removes_expired_uploads_and_unreferenced_blobs(server: Server) -> None:
    content = payload(2 * CHUNK)
    stale = await server.init(len(content))
    await server.send(stale, content, only=[0])
    fresh = await server.init(len(content))
    await age(server, stale, hours=25)
    kept = await server.resumable_upload(payload(100, seed=5), "kept.bin")
    status, _ = await server.call(
        "POST",
        "/upload",
        data=b"result bytes",
        headers={**AUTH, "X-Job-Id": "job1", "Content-Type": "application/octet-stream"},
    )
    assert status == 201
    stray = "ab" + "0" * 62
    server.put_stray_blob(stray, b"nobody")
    orphan = server.root / "uploads" / ("f" * 32)  # a chunk folder of an earlier version
    orphan.mkdir(parents=True)
    (orphan / "0").write_bytes(b"lost")
    server.put_stray_partial("e" * 32, b"no record")
    assert server.partial(stale) != []
    report = await server.runner.app[UPLOADS_KEY].cleanup()
    assert report.uploads == [stale]
    assert report.blobs == [stray]
    assert report.orphan_chunk_dirs == ["e" * 32, "f" * 32]
    assert server.partial(stale) == [] and server.partial("e" * 32) == []
    assert not orphan.exists()
    status, error = await server.status(stale)
    assert (status, code(error)) == (404, "UPLOAD_NOT_FOUND")
    status, body = await server.status(fresh)
    assert body["status"] == "initiated"
    assert server.blob_bytes(kept["sha256"]) == payload(100, seed=5)
    assert len(server.blobs()) == 2  # the completed upload and the /upload result


def blob_environment(server: Server) -> dict[str, str]:
    """The environment a command needs to reach the server's blob backend."""
    if (bucket := server.bucket) is None:
        return {}
    return {
        "RTC_STORAGE_BACKEND": "s3",
        "RTC_S3_ENDPOINT_URL": bucket.endpoint,
        "RTC_S3_BUCKET": bucket.name,
        **FAKE_CREDENTIALS,
    }


async def test_cleanup_once_command(server: Server) -> None:
    content = payload(CHUNK)
    stale = await server.init(len(content))
    await server.send(stale, content)
    await age(server, stale, hours=48)
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "signaling", "--storage-path", str(server.root), "--cleanup-once"],
        capture_output=True,
        text=True,
        timeout=30,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
            "RTC_DATABASE_URL": server.database_url,
            **blob_environment(server),
        },
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["removed"]["uploads"] == [stale]
    assert report["total"] == 1
    assert server.partial(stale) == []


async def test_server_cleans_up_periodically(tmp_path: Path) -> None:
    root = tmp_path / "store"
    runner, port = await start_server(make_settings(root, upload_ttl_s=0.5, cleanup_interval_s=0.1))
    try:
        async with aiohttp.ClientSession() as session:
            server = Server(root, session, runner, port)
            upload_id = await server.init(10)
            deadline = asyncio.get_running_loop().time() + 5.0
            while (await server.status(upload_id))[0] != 404:
                assert asyncio.get_running_loop().time() < deadline, "never cleaned up"
                await asyncio.sleep(0.1)
            assert server.partial(upload_id) == []
    finally:
        await runner.cleanup()
