"""Attacks on the storage service's credentials and ownership, as the attacker's steps.

A real server on loopback, real HTTP, real SQLite and files. The victim V and the
attacker A are client principals (fingerprints) with their own client keys; results
reach the service through a worker key, for their owner. Each test asserts that the
attacker gets a refusal with a code and that the victim's data is unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from signaling.capability import SECRET_FILE_NAME, Capability, issue
from signaling.keys import Role
from tests.conftest import StartService
from tests.storage_service import KEY, Answer, StorageService, fingerprint_of

VICTIM = fingerprint_of("victim")
ATTACKER = fingerprint_of("attacker")
SECRET = b"the victim's results, run 7\n" * 40
FAKE = b"the attacker's results\n" * 40


@dataclass
class Cast:
    """The service and everyone's keys."""

    service: StorageService
    worker: str
    other_worker: str
    victim: str
    attacker: str


@pytest_asyncio.fixture
async def cast(start_storage_service: StartService) -> Cast:
    service = await start_storage_service(upload_chunk_size=1024)
    return Cast(
        service=service,
        worker=await service.make_key(Role.WORKER, "gpu-1"),
        other_worker=await service.make_key(Role.WORKER, "gpu-2", fingerprint_of("gpu-2")),
        victim=await service.make_key(Role.CLIENT, "victim", VICTIM),
        attacker=await service.make_key(Role.CLIENT, "attacker", ATTACKER),
    )


def form(job_id: str) -> aiohttp.FormData:
    """A multipart upload of the attacker's bytes as ``job_id``."""
    data = aiohttp.FormData()
    data.add_field("job_id", job_id)
    data.add_field("file", FAKE, filename="results.zip")
    return data


async def store(cast: Cast, owner: str, job_id: str, data: bytes, **headers: str) -> Answer:
    answer = await cast.service.store_result(cast.worker, owner, job_id, data, **headers)
    assert answer.status in (200, 201), answer
    return answer


async def victim_still_has(cast: Cast, job_id: str = "run7", data: bytes = SECRET) -> None:
    """The victim downloads its bytes (kept), unchanged."""
    got = await cast.service.request("GET", f"/download/{job_id}?keep=true", key=cast.victim)
    assert (got.status, got.body) == (200, data)


# ------------------------------------------------------------------ keys and roles


async def test_unknown_revoked_and_wrong_role_keys_are_refused(cast: Cast) -> None:
    service = cast.service
    await store(cast, VICTIM, "run7", SECRET)
    key_id = cast.victim.split("_")[1]
    forged = [
        "guess",
        "rtck_0123456789abcdef_" + "A" * 43,  # well formed, unknown id
        f"rtck_{key_id}_" + "A" * 43,  # the victim's id, another secret
        cast.victim[:-1] + ("A" if cast.victim[-1] != "A" else "B"),
        KEY + "x",
    ]
    for key in forged:
        got = await service.request("GET", "/download/run7?keep=true", key=key)
        assert (got.status, got.code) == (401, "UNAUTHORIZED"), key
        got = await service.request("GET", "/list", key=key)
        assert (got.status, got.code) == (401, "UNAUTHORIZED"), key
    # a client key may not store results, a worker key may not read them
    got = await service.store_result(cast.attacker, VICTIM, "run7", FAKE, X_Replace="true")
    assert (got.status, got.code) == (403, "FORBIDDEN")
    for key in (cast.worker, cast.other_worker):
        for path in ("/download/run7", f"/download/run7?owner={VICTIM}"):
            got = await service.request("GET", path, key=key)
            assert (got.status, got.code) == (403, "FORBIDDEN")
        got = await service.request("DELETE", "/delete/run7", key=key)
        assert (got.status, got.code) == (403, "FORBIDDEN")
    # a revoked key stops working at once
    assert await service.db.revoke_key("victim", "2030-01-01T00:00:00Z")
    got = await service.request("GET", "/download/run7?keep=true", key=cast.victim)
    assert (got.status, got.code) == (401, "KEY_REVOKED")
    got = await service.request("GET", f"/download/run7?keep=true&owner={VICTIM}", key=KEY)
    assert (got.status, got.body) == (200, SECRET)


# ------------------------------------------------------------------ ownership


async def test_a_client_key_sees_only_its_own_jobs(cast: Cast) -> None:
    service = cast.service
    await store(cast, VICTIM, "run7", SECRET)
    await store(cast, ATTACKER, "mine", FAKE)
    got = await service.request("GET", "/list", key=cast.attacker)
    assert [(f["owner"], f["job_id"]) for f in got.body["files"]] == [(ATTACKER, "mine")]
    got = await service.request("GET", f"/list?owner={VICTIM}", key=cast.attacker)
    assert [f["job_id"] for f in got.body["files"]] == ["mine"]  # ?owner= is for admins
    got = await service.request("GET", "/list", key=cast.victim)
    assert [f["job_id"] for f in got.body["files"]] == ["run7"]
    got = await service.request("GET", "/list", key=cast.worker)
    assert got.body["files"] == []
    got = await service.request("GET", "/list", key=KEY)
    assert sorted(f["job_id"] for f in got.body["files"]) == ["mine", "run7"]


async def test_another_client_cannot_read_or_delete_the_victims_job(cast: Cast) -> None:
    service = cast.service
    await store(cast, VICTIM, "run7", SECRET)
    for method, path in (
        ("GET", "/download/run7"),
        ("GET", f"/download/run7?owner={VICTIM}"),
        ("HEAD", "/download/run7"),
        ("DELETE", "/delete/run7"),
        ("DELETE", f"/delete/run7?owner={VICTIM}"),
    ):
        got = await service.request(method, path, key=cast.attacker)
        assert got.status == 404, (method, path)
        if method != "HEAD":
            assert got.code == "NOT_FOUND"
            assert SECRET not in json.dumps(got.body).encode()
    await victim_still_has(cast)


async def test_job_id_takeover_stores_beside_the_victim_and_never_over_it(cast: Cast) -> None:
    service = cast.service
    await store(cast, VICTIM, "run7", SECRET)
    # the attacker sends JOB_ID::run7; the worker uploads for the attacker's principal
    first = await service.store_result(cast.worker, ATTACKER, "run7", FAKE)
    assert (first.status, first.body["owner"]) == (201, ATTACKER)
    await victim_still_has(cast)
    got = await service.request("GET", "/download/run7?keep=true", key=cast.attacker)
    assert (got.status, got.body) == (200, FAKE)
    # the victim's own job again, without meaning to replace it: refused
    again = await service.store_result(cast.worker, VICTIM, "run7", FAKE)
    assert (again.status, again.code) == (409, "JOB_EXISTS")
    again = await service.store_result(cast.other_worker, VICTIM, "run7", FAKE)
    assert (again.status, again.code) == (409, "JOB_EXISTS")
    await victim_still_has(cast)
    # ... and as a multipart form
    again = await service.request(
        "POST", "/upload", key=cast.worker, headers={"X-Owner": VICTIM}, data=form("run7")
    )
    assert (again.status, again.code) == (409, "JOB_EXISTS")
    await victim_still_has(cast)
    # the same owner replacing on purpose
    new = b"run 7, second version\n"
    replaced = await store(cast, VICTIM, "run7", new, X_Replace="true")
    assert replaced.status == 201
    await victim_still_has(cast, data=new)


async def test_only_the_owners_download_deletes(cast: Cast) -> None:
    service = cast.service
    stored = await store(cast, VICTIM, "run7", SECRET)
    got = await service.request("GET", "/download/run7", key=KEY)  # admin, no keep
    assert (got.status, got.body) == (200, SECRET)
    got = await service.request("HEAD", "/download/run7", key=cast.victim)  # HEAD: nothing
    assert got.status == 200 and got.headers["X-Content-SHA256"] == stored.body["sha256"]
    await asyncio.sleep(0.1)
    await victim_still_has(cast)
    got = await service.request("GET", "/download/run7", token=stored.body["download_token"])
    assert (got.status, got.body) == (200, SECRET)
    await service.wait_status("run7", 410)  # the owner's download deleted it
    records = (await service.request("GET", "/list", key=cast.victim)).body["files"]
    assert [(r["job_id"], r["deleted"]) for r in records] == [("run7", True)]


# ------------------------------------------------------------------ capabilities


async def test_forged_expired_and_foreign_tokens_are_refused(cast: Cast) -> None:
    service = cast.service
    run7 = (await store(cast, VICTIM, "run7", SECRET)).body
    run8 = (await store(cast, VICTIM, "run8", b"run 8")).body
    token = run7["download_token"]
    assert "::" not in token and token.isascii()
    secret = (service.root / SECRET_FILE_NAME).read_bytes()
    assert (service.root / SECRET_FILE_NAME).stat().st_mode & 0o777 == 0o600

    def grant(**changes: Any) -> Capability:
        fields = {
            "owner": VICTIM,
            "job_id": "run7",
            "sha256": run7["sha256"],
            "expires_at": int(time.time()) + 600,
        }
        return Capability(**{**fields, **changes})

    refused = {
        "flipped": token[:10] + ("A" if token[10] != "A" else "B") + token[11:],
        "truncated": token[:-4],
        "garbage": "not-a-token",
        "other secret": issue(b"\x00" * 32, grant()),
        "expired": issue(secret, grant(expires_at=int(time.time()) - 1)),
        "too long": "A" * 5000,
    }
    expected = {"expired": "TOKEN_EXPIRED"}
    for name, bad in refused.items():
        for method, path in (("GET", "/download/run7"), ("DELETE", "/delete/run7")):
            got = await service.request(method, path, token=bad)
            assert (got.status, got.code) == (401, expected.get(name, "TOKEN_INVALID")), name
        got = await service.request("GET", f"/download/run7?token={bad}")
        assert got.status == 401, name
    # a valid token of job run8 does not open run7, nor delete it
    for method, path in (("GET", "/download/run7"), ("DELETE", "/delete/run7")):
        got = await service.request(method, path, token=run8["download_token"])
        assert (got.status, got.code) == (403, "FORBIDDEN")
    # a valid token with a key of its own: the token decides, and still only for run8
    got = await service.request("GET", "/download/run7", token=run8["download_token"], key=KEY)
    assert (got.status, got.code) == (403, "FORBIDDEN")
    await victim_still_has(cast)
    # the token works alone, in the header or the query
    got = await service.request("GET", f"/download/run7?keep=true&token={token}")
    assert (got.status, got.body) == (200, SECRET)
    # once the owner replaces the content, the old token is worth nothing
    await store(cast, VICTIM, "run7", b"new content", X_Replace="true")
    got = await service.request("GET", "/download/run7", token=token)
    assert (got.status, got.code) == (410, "GONE")
    await victim_still_has(cast, data=b"new content")


# ------------------------------------------------------------------ resumable uploads


async def resumable_init(service: StorageService, key: str, size: int) -> Answer:
    body = {"file_name": "f.bin", "total_size": size, "user_id": "u", "user_role": "r"}
    return await service.request("POST", "/api/upload/init", key=key, body=body)


async def test_another_principal_cannot_touch_an_upload(cast: Cast) -> None:
    service = cast.service
    init = await resumable_init(service, cast.victim, 10)
    upload_id = init.body["upload_id"]
    chunk = {"X-Upload-Id": upload_id, "X-Chunk-Index": "0"}
    got = await service.request(
        "PUT", "/api/upload/chunk", key=cast.attacker, headers=chunk, data=FAKE[:10]
    )
    assert (got.status, got.code) == (404, "UPLOAD_NOT_FOUND")
    for method, path, body in (
        ("GET", f"/api/upload/{upload_id}/status", None),
        ("POST", "/api/upload/complete", {"upload_id": upload_id}),
        ("POST", "/api/upload/cancel", {"upload_id": upload_id}),
    ):
        got = await service.request(method, path, key=cast.attacker, body=body)
        assert (got.status, got.code) == (404, "UPLOAD_NOT_FOUND"), path
    got = await service.request("GET", f"/api/upload/{upload_id}/status", key=cast.victim)
    assert (got.status, got.body["status"], got.body["owner"]) == (200, "initiated", VICTIM)


async def test_complete_with_a_wrong_sha256_publishes_nothing(cast: Cast) -> None:
    service = cast.service
    content = (SECRET * 3)[:2500]
    upload_id = (await resumable_init(service, cast.victim, len(content))).body["upload_id"]

    async def send_all() -> None:
        for index in range(3):
            headers = {"X-Upload-Id": upload_id, "X-Chunk-Index": str(index)}
            piece = content[index * 1024 : (index + 1) * 1024]
            got = await service.request(
                "PUT", "/api/upload/chunk", key=cast.victim, headers=headers, data=piece
            )
            assert got.status == 200, got

    await send_all()
    wrong = {"upload_id": upload_id, "sha256": hashlib.sha256(FAKE).hexdigest()}
    got = await service.request("POST", "/api/upload/complete", key=cast.victim, body=wrong)
    assert (got.status, got.code) == (400, "SHA256_MISMATCH")
    assert service.blobs() == []
    status = await service.request("GET", f"/api/upload/{upload_id}/status", key=cast.victim)
    assert (status.body["status"], status.body["key"], status.body["missing_chunks"]) == (
        "in_progress",
        None,
        [0, 1, 2],
    )
    await send_all()
    right = {"upload_id": upload_id, "sha256": hashlib.sha256(content).hexdigest().upper()}
    got = await service.request("POST", "/api/upload/complete", key=cast.victim, body=right)
    assert (got.status, got.body["status"]) == (200, "completed")
    assert service.blob_bytes(got.body["sha256"]) == content


# ------------------------------------------------------------------ job ids in paths


async def raw_request(service: StorageService, method: str, target: str) -> tuple[int, bytes]:
    """Send ``target`` byte for byte (no client-side URL normalisation)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
    try:
        writer.write(
            f"{method} {target} HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


# (target, reaches the route's handler: one path segment after the route's name)
DOT_PATHS = [
    ("/download/.", True),
    ("/download/..", True),
    ("/download/...", True),
    ("/download/%2E", True),
    ("/download/%2e%2E", True),
    ("/download/.%2E", True),
    ("/download/..%2F", True),
    ("/download/%2E%2E%2Flist", True),
    ("/download/a%2Fb", True),
    ("/download/run7%2F..", True),
    ("/download/x/..", False),
    ("/download/./run7", False),
    ("/download//run7", False),
    ("/download/%2e%2e/", False),
    ("/delete/.", True),
    ("/delete/..", True),
    ("/delete/%2E%2E", True),
    ("/delete/..%2Frun7", True),
    ("/delete/x/..", False),
]
ROUTE_METHODS = {"download": {"GET", "HEAD"}, "delete": {"DELETE"}}


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
async def test_dot_only_and_escaping_job_ids_are_refused_on_every_route(
    cast: Cast, method: str
) -> None:
    service = cast.service
    await store(cast, VICTIM, "run7", SECRET)
    await store(cast, VICTIM, "run8", b"8")
    for target, one_segment in DOT_PATHS:
        status, body = await raw_request(service, method, target)
        if not one_segment:
            expected = (404, "NOT_FOUND")  # no route has this shape
        elif method in ROUTE_METHODS[target.split("/")[1]]:
            expected = (400, "INVALID_FIELD")  # the handler refuses the job id
        else:
            expected = (405, "METHOD_NOT_ALLOWED")
        assert status == expected[0], (method, target, status, body)
        if method != "HEAD":
            assert json.loads(body)["error"]["code"] == expected[1], (method, target)
    for bad in (".", "..", "...", "a/b"):
        got = await service.store_result(cast.worker, VICTIM, bad, FAKE)
        assert (got.status, got.code) == (400, "INVALID_FIELD"), bad
        got = await service.request(
            "POST",
            "/upload",
            key=cast.worker,
            headers={"X-Owner": VICTIM},
            data=form(bad),
        )
        assert (got.status, got.code) == (400, "INVALID_FIELD"), bad
    await victim_still_has(cast)
    await victim_still_has(cast, "run8", b"8")
    listing = (await service.request("GET", "/list", key=KEY)).body["files"]
    assert sorted(f["job_id"] for f in listing) == ["run7", "run8"]
