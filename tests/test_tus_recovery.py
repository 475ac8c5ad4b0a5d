"""tus uploads against a real server (both engine sets): an expired upload stays gone
on every route, a completion that failed once is finished by the next PATCH, and the
PATCH completing a result upload answers its download token."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from rtc_worker.storage import format_timestamp
from signaling.keys import Role
from signaling.tus import TUS_KEY
from tests.conftest import StartService
from tests.storage_service import KEY
from tests.test_tus import CHUNK, OFFSET_TYPE, OWNER, TUS, Tus, content, metadata
from tests.test_tus import service as service  # the fixture


async def backdate(service: Tus, upload_id: str) -> None:
    """Move the upload's last change past its time to live (as a day's wait would)."""
    ttl_s = service.runner.app[TUS_KEY].manager.ttl_s
    old = format_timestamp(datetime.now(UTC) - timedelta(seconds=ttl_s + 60))
    await service.db.set_upload_times(upload_id, old, old)


async def open_uploads(service: Tus) -> list[Any]:
    return [u for u in await service.db.all_uploads() if u.status in ("initiated", "in_progress")]


async def test_an_expired_tus_upload_cannot_be_revived_past_the_quota(
    start_storage_service: StartService,
) -> None:
    """The attacker lets a tus upload expire (it stops counting against the quota),
    opens another one, then tries to bring the expired one back through the chunk
    routes to hold two open uploads under a quota of one."""
    service = await start_storage_service(
        Tus, upload_quota_count=1, upload_chunk_size=CHUNK, disk_reserve_bytes=0
    )
    assert isinstance(service, Tus)
    url = await service.create(100)
    upload_id = url.rsplit("/", 1)[1]
    assert (await service.patch(url, 0, b"a" * 10)).status == 204
    await backdate(service, upload_id)
    second = await service.create(100)  # the expired one no longer counts
    headers = {"X-Upload-Id": upload_id, "X-Chunk-Index": "0"}
    revived = await service.request(
        "PUT", "/api/upload/chunk", key=KEY, headers=headers, data=b"a" * 100
    )
    assert (revived.status, revived.code) == (404, "UPLOAD_NOT_FOUND")
    assert (await service.tus("HEAD", url)).status == 410
    assert (await service.patch(url, 10, b"a" * 90)).status == 410
    done = await service.request(
        "POST", "/api/upload/complete", key=KEY, body={"upload_id": upload_id}
    )
    assert (done.status, done.code) == (404, "UPLOAD_NOT_FOUND")
    assert [u.upload_id for u in await open_uploads(service)] == [second.rsplit("/", 1)[1]]
    third = await service.tus("POST", "/files/", **{"Upload-Length": "1"})
    assert (third.status, third.code) == (413, "QUOTA_EXCEEDED")
    assert service.partial_bytes(upload_id) is None
    assert (await service.status(upload_id))["status"] == "cancelled"


async def test_an_expired_chunk_route_upload_cannot_be_revived(
    start_storage_service: StartService,
) -> None:
    """The same through the chunk routes only: init, a chunk, expiry, then a chunk and
    a complete on the expired upload are refused and nothing is published."""
    service = await start_storage_service(
        Tus, upload_quota_count=1, upload_chunk_size=CHUNK, disk_reserve_bytes=0
    )
    assert isinstance(service, Tus)
    data = content(2 * CHUNK)
    body = {"file_name": "x.bin", "total_size": len(data), "user_id": "u1", "user_role": "lab"}
    got = await service.request("POST", "/api/upload/init", key=KEY, body=body)
    upload_id = got.body["upload_id"]
    headers = {"X-Upload-Id": upload_id, "X-Chunk-Index": "0"}
    sent = await service.request(
        "PUT", "/api/upload/chunk", key=KEY, headers=headers, data=data[:CHUNK]
    )
    assert sent.status == 200
    await backdate(service, upload_id)
    assert (await service.request("POST", "/api/upload/init", key=KEY, body=body)).status == 201
    headers["X-Chunk-Index"] = "1"
    late = await service.request(
        "PUT", "/api/upload/chunk", key=KEY, headers=headers, data=data[CHUNK:]
    )
    assert (late.status, late.code) == (404, "UPLOAD_NOT_FOUND")
    done = await service.request(
        "POST", "/api/upload/complete", key=KEY, body={"upload_id": upload_id}
    )
    assert (done.status, done.code) == (404, "UPLOAD_NOT_FOUND")
    assert len(await open_uploads(service)) == 1
    assert service.blob_names() == []


async def test_a_completion_that_failed_once_is_finished_by_an_empty_patch(
    service: Tus,
) -> None:
    """The store fails once as the last bytes arrive (a transient I/O error): the bytes
    stay held, HEAD reports the end offset, and the next PATCH at the end, even
    without a body, completes the upload with the right sha256."""
    manager = service.runner.app[TUS_KEY].manager
    real = manager.complete
    calls: list[int] = []

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(5, "transient I/O error")
        return await real(*args, **kwargs)

    manager.complete = flaky  # type: ignore[method-assign]
    data = content(3 * CHUNK + 7, seed=9)
    url = await service.create(len(data))
    upload_id = url.rsplit("/", 1)[1]
    assert (await service.patch(url, 0, data)).status == 500
    head = await service.tus("HEAD", url)
    assert head.status == 200 and head.headers["Upload-Offset"] == str(len(data))
    assert (await service.status(upload_id))["status"] == "in_progress"  # HEAD changed nothing
    assert (await service.patch(url, 0, data)).status == 409
    finished = await service.patch(url, len(data), b"")
    assert finished.status == 204 and finished.headers["Upload-Offset"] == str(len(data))
    status = await service.status(upload_id)
    assert status["status"] == "completed"
    assert status["sha256"] == hashlib.sha256(data).hexdigest()
    assert service.blob_bytes(status["sha256"]) == data
    assert len(calls) == 2


async def test_the_patch_completing_a_result_upload_gives_its_download_token(
    service: Tus,
) -> None:
    """A worker storing a result over tus gets what ``POST /upload`` answers: the
    download URL and a token that fetches that one result without a key."""
    worker = await service.make_key(Role.WORKER, "gpu-1")
    data = content(2 * CHUNK + 5, seed=4)
    meta = metadata(job_id="job-t", owner=OWNER, filename="r.zip")
    url = await service.create(len(data), key=worker, **{"Upload-Metadata": meta})
    first = await service.patch(url, 0, data[:CHUNK], key=worker)
    assert first.status == 204 and "Upload-Download-Token" not in first.headers
    last = await service.patch(url, CHUNK, data[CHUNK:], key=worker)
    assert last.status == 204
    assert last.headers["Upload-Download-Url"] == "/download/job-t"
    assert last.headers["Cache-Control"] == "no-store"
    assert last.headers["Upload-Download-Expires"] > format_timestamp(datetime.now(UTC))
    token = last.headers["Upload-Download-Token"]
    got = await service.request("GET", "/download/job-t?keep=true", token=token)
    assert got.status == 200 and got.body == data
    other = await service.store_result(worker, OWNER, "job-u", b"other")
    assert other.status == 201
    refused = await service.request("GET", "/download/job-u?keep=true", token=token)
    assert (refused.status, refused.code) == (403, "FORBIDDEN")
    # creation-with-upload completing in one request answers the same
    headers = {
        **TUS,
        **OFFSET_TYPE,
        "Upload-Length": "3",
        "Upload-Metadata": metadata(job_id="job-v", owner=OWNER),
    }
    whole = await service.request("POST", "/files/", key=worker, headers=headers, data=b"abc")
    assert whole.status == 201 and whole.headers["Upload-Download-Url"] == "/download/job-v"
    got = await service.request(
        "GET", "/download/job-v", token=whole.headers["Upload-Download-Token"]
    )
    assert got.status == 200 and got.body == b"abc"
    # a plain upload (no job) is no result: no token
    plain = await service.create(3)
    done = await service.patch(plain, 0, b"xyz")
    assert done.status == 204 and "Upload-Download-Token" not in done.headers


async def test_a_result_upload_whose_storing_failed_once_is_finished_by_an_empty_patch(
    service: Tus,
) -> None:
    """The database fails once as a result upload is stored: the next PATCH at the end
    stores it and answers the download token."""
    store = service.runner.app[TUS_KEY].manager.store
    real = store.commit
    calls: list[int] = []

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(5, "transient I/O error")
        return await real(*args, **kwargs)

    store.commit = flaky  # type: ignore[method-assign]
    worker = await service.make_key(Role.WORKER, "gpu-1")
    data = content(CHUNK + 3, seed=6)
    meta = metadata(job_id="job-f", owner=OWNER)
    url = await service.create(len(data), key=worker, **{"Upload-Metadata": meta})
    assert (await service.patch(url, 0, data, key=worker)).status == 500
    assert await service.offset(url, worker) == len(data)
    finished = await service.patch(url, len(data), b"", key=worker)
    assert finished.status == 204 and len(calls) == 2
    token = finished.headers["Upload-Download-Token"]
    got = await service.request("GET", "/download/job-f?keep=true", token=token)
    assert got.status == 200 and got.body == data
