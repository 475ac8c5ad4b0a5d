"""Relay objects in the storage service (``/files/`` with the ``relay`` metadata key,
``GET|HEAD|DELETE /relay/{upload_id}``): a real server on loopback, real HTTP, on
SQLite with the folder and on PostgreSQL with an S3 bucket (moto); and the attacks on
them, each written as the attacker's steps."""

from __future__ import annotations

import base64
import hashlib
import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from protocol import relay_messages
from rtc_worker.storage import parse_timestamp
from signaling import relay_objects
from signaling.capability import RelayCapability
from signaling.keys import Role
from signaling.relay_routes import RELAY_KEY
from signaling.results_store import STORE_KEY
from signaling.tus import TUS_KEY
from signaling.uploads_api import UPLOADS_KEY
from tests.conftest import StartService
from tests.storage_service import KEY, Answer, StorageService, fingerprint_of

TUS = {"Tus-Resumable": "1.0.0"}
RELAY_META = {"Upload-Metadata": f"relay {base64.b64encode(b'1').decode()}"}
OFFSET_TYPE = {"Content-Type": "application/offset+octet-stream"}
TTL_S = 600.0


def content(size: int, seed: int = 1) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32) + b"r" * (size % 32)


class Relay(StorageService):
    """The storage service with the relay steps of these tests."""

    async def tus(self, method: str, path: str, key: str, **headers: Any) -> Answer:
        data = headers.pop("data", None)
        return await self.request(method, path, key=key, headers={**TUS, **headers}, data=data)

    async def start_relay(self, length: int, key: str = KEY) -> tuple[Answer, str]:
        """``POST /files/`` of a relay object: the answer and the upload's path."""
        got = await self.tus("POST", "/files/", key, **{"Upload-Length": str(length), **RELAY_META})
        return got, got.headers.get("Location", "")

    async def patch(self, path: str, offset: int, data: bytes, key: str = KEY) -> Answer:
        headers = {"Upload-Offset": str(offset), **OFFSET_TYPE}
        return await self.tus("PATCH", path, key, data=data, **headers)

    async def put_relay(self, data: bytes, key: str = KEY) -> tuple[str, str, Answer]:
        """A completed relay object of ``data``: its id, its token, the completing answer."""
        created, path = await self.start_relay(len(data), key)
        assert created.status == 201, created.body
        done = await self.patch(path, 0, data, key)
        assert done.status == 204, done.body
        return path.rsplit("/", 1)[1], done.headers["Upload-Relay-Token"], done

    async def read(
        self, upload_id: str, token: str | None, key: str | None = KEY, **headers: str
    ) -> Answer:
        sent = dict(headers)
        if token is not None:
            sent["X-Relay-Token"] = token
        method = sent.pop("method", "GET")
        return await self.request(method, f"/relay/{upload_id}", key=key, headers=sent)

    async def remove(self, upload_id: str, token: str | None, key: str = KEY) -> Answer:
        headers = {} if token is None else {"X-Relay-Token": token}
        return await self.request("DELETE", f"/relay/{upload_id}", key=key, headers=headers)

    @property
    def app(self) -> Any:
        return self.runner.app

    def blob_count(self) -> int:
        return len(self.blobs())


@pytest.fixture
async def service(start_storage_service: StartService) -> Relay:
    svc: Relay = await start_storage_service(
        Relay,
        storage_max_file_size=8 << 20,
        upload_chunk_size=64 * 1024,
        disk_reserve_bytes=0,
        relay_ttl_s=TTL_S,
    )
    return svc


def hdr(answer: Answer, name: str) -> str | None:
    """A header of ``answer``, by its name in any case."""
    return CIMultiDict(answer.headers).get(name)


def same_refusal(answer: Answer) -> tuple[int, str | None, str]:
    """What a refused read shows a reader (the timestamp aside)."""
    return answer.status, answer.code, answer.body["error"]["message"]


NOT_FOUND = (404, "RELAY_NOT_FOUND", "no such relay object")


# ------------------------------------------------------------------ the routes


async def test_the_completing_patch_answers_where_with_which_token_until_when(
    service: Relay,
) -> None:
    data = content(200_000)
    upload_id, token, done = await service.put_relay(data)
    assert done.headers["Upload-Relay-Url"] == f"/relay/{upload_id}"
    assert done.headers["Upload-Relay-Sha256"] == hashlib.sha256(data).hexdigest()
    assert done.headers["Cache-Control"] == "no-store"
    expires = parse_timestamp(done.headers["Upload-Relay-Expires"]).timestamp()
    assert abs(expires - (time.time() + TTL_S)) < 5
    # a lost answer is not a lost object: HEAD of the completed upload says it again
    head = await service.tus("HEAD", f"/files/{upload_id}", KEY)
    assert head.status == 200 and head.headers["Upload-Offset"] == str(len(data))
    assert head.headers["Upload-Relay-Token"] == token
    assert "relay " in head.headers["Upload-Metadata"]
    got = await service.read(upload_id, token)
    assert (got.status, got.body) == (200, data)


async def test_creation_with_upload_completes_a_relay_object_in_one_request(
    service: Relay,
) -> None:
    data = content(1000, seed=2)
    got = await service.tus(
        "POST",
        "/files/",
        KEY,
        data=data,
        **{"Upload-Length": str(len(data)), **RELAY_META, **OFFSET_TYPE},
    )
    assert got.status == 201, got.body
    upload_id = got.headers["Location"].rsplit("/", 1)[1]
    read = await service.read(upload_id, got.headers["Upload-Relay-Token"])
    assert (read.status, read.body) == (200, data)


async def test_ranges_head_and_416_as_download(service: Relay) -> None:
    data = content(100_000, seed=3)
    upload_id, token, done = await service.put_relay(data)
    etag = f'"{done.headers["Upload-Relay-Sha256"]}"'
    whole = await service.read(upload_id, token)
    assert whole.headers["Accept-Ranges"] == "bytes" and hdr(whole, "ETag") == etag
    assert whole.headers["Content-Length"] == str(len(data))
    part = await service.read(upload_id, token, Range="bytes=10-19")
    assert (part.status, part.body) == (206, data[10:20])
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    tail = await service.read(upload_id, token, Range="bytes=99990-")
    assert (tail.status, tail.body) == (206, data[99990:])
    suffix = await service.read(upload_id, token, Range="bytes=-5")
    assert (suffix.status, suffix.body) == (206, data[-5:])
    stale = await service.read(upload_id, token, Range="bytes=0-9", **{"If-Range": '"x"'})
    assert (stale.status, stale.body) == (200, data)
    past = await service.read(upload_id, token, Range=f"bytes={len(data)}-")
    assert (past.status, past.code) == (416, "RANGE_NOT_SATISFIABLE")
    assert past.headers["Content-Range"] == f"bytes */{len(data)}"
    head = await service.read(upload_id, token, method="HEAD", Range="bytes=5-9")
    assert (head.status, head.body) == (206, b"")
    assert head.headers["Content-Length"] == "5"


async def test_any_role_reads_with_the_token(service: Relay) -> None:
    worker = await service.make_key(Role.WORKER, "w1")
    reader = await service.make_key(Role.CLIENT, "c1", fingerprint_of("reader"))
    upload_id, token, _ = await service.put_relay(content(5000), key=worker)
    for key in (worker, reader, KEY):
        got = await service.read(upload_id, token, key=key)
        assert (got.status, got.body) == (200, content(5000))


async def test_delete_with_the_token_or_by_the_uploader(service: Relay) -> None:
    uploader = await service.make_key(Role.CLIENT, "c1", fingerprint_of("uploader"))
    reader = await service.make_key(Role.WORKER, "w1")
    first, token, _ = await service.put_relay(content(3000, seed=4), key=uploader)
    second, other, _ = await service.put_relay(content(3000, seed=5), key=uploader)
    assert service.blob_count() == 2
    assert (await service.remove(first, token, key=reader)).status == 204
    assert same_refusal(await service.read(first, token, key=reader)) == NOT_FOUND
    assert (await service.remove(second, None, key=uploader)).status == 204
    assert same_refusal(await service.read(second, other)) == NOT_FOUND
    assert service.blob_count() == 0
    assert await service.db.get_upload(first) is None


async def test_removing_a_relay_object_keeps_a_blob_another_record_uses(
    service: Relay,
) -> None:
    data = content(4000, seed=6)
    stored = await service.store_result(KEY, fingerprint_of("owner"), "run7", data)
    assert stored.status == 201
    upload_id, token, _ = await service.put_relay(data)
    twin, twin_token, _ = await service.put_relay(data)
    assert service.blob_count() == 1  # content-addressed: one blob for the three
    assert (await service.remove(upload_id, token)).status == 204
    assert (await service.read(twin, twin_token)).body == data
    assert (await service.remove(twin, twin_token)).status == 204
    got = await service.request("GET", "/download/run7?keep=true", key=KEY)
    assert (got.status, got.body) == (200, data)
    assert service.blob_count() == 1


async def test_an_expired_relay_object_is_refused_then_removed_by_the_cleanup(
    service: Relay,
) -> None:
    data = content(7000, seed=7)
    upload_id, token, done = await service.put_relay(data)
    expires = parse_timestamp(done.headers["Upload-Relay-Expires"])
    service.app[RELAY_KEY].now = lambda: expires.timestamp() + 1  # the clock passes it
    assert same_refusal(await service.read(upload_id, token)) == NOT_FOUND
    report = await service.app[UPLOADS_KEY].cleanup(expires - timedelta(seconds=5))
    assert report.relays == []  # not yet expired at that time
    report = await service.app[UPLOADS_KEY].cleanup(expires + timedelta(seconds=1))
    assert report.relays == [upload_id]
    assert done.headers["Upload-Relay-Sha256"] in report.blobs
    assert await service.db.get_upload(upload_id) is None
    assert service.blob_count() == 0


async def test_a_relay_object_cannot_be_a_result(service: Relay) -> None:
    meta = RELAY_META["Upload-Metadata"] + ",job_id " + base64.b64encode(b"run1").decode()
    meta += ",owner " + base64.b64encode(fingerprint_of("o").encode()).decode()
    got = await service.tus(
        "POST", "/files/", KEY, **{"Upload-Length": "10"}, **{"Upload-Metadata": meta}
    )
    assert (got.status, got.code) == (400, "INVALID_FIELD")


# ------------------------------------------------------------------ the attacks


async def test_attack_reading_a_relay_object_without_its_token(service: Relay) -> None:
    victim = await service.make_key(Role.CLIENT, "victim", fingerprint_of("victim"))
    attacker = await service.make_key(Role.CLIENT, "attacker", fingerprint_of("attacker"))
    data = content(9000, seed=8)
    upload_id, token, done = await service.put_relay(data, key=victim)
    # the attacker learnt the upload id (not the token) and tries every way in
    own_id, own_token, _ = await service.put_relay(content(10, seed=9), key=attacker)
    download = await service.store_result(KEY, fingerprint_of("attacker"), "run1", b"x")
    # a token the server itself signed for this very object, but expired
    expired = service.app[STORE_KEY].relay_token(
        _capability(upload_id, done, expires_at=int(time.time()) - 1)
    )
    forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    attempts = {
        "no token": await service.read(upload_id, None, key=attacker),
        "another object's token": await service.read(upload_id, own_token, key=attacker),
        "an expired token": await service.read(upload_id, expired, key=attacker),
        "a forged token": await service.read(upload_id, forged, key=attacker),
        "a download token": await service.read(
            upload_id, download.body["download_token"], key=attacker
        ),
        "garbage": await service.read(upload_id, "x" * 2000, key=attacker),
        "a ranged read": await service.read(upload_id, own_token, key=attacker, Range="bytes=0-9"),
        "a HEAD": await service.read(upload_id, own_token, key=attacker, method="HEAD"),
        "no such object": await service.read("f" * 32, own_token, key=attacker),
    }
    for how, got in attempts.items():
        if how == "a HEAD":
            assert (got.status, got.body) == (404, b""), how
            continue
        assert same_refusal(got) == NOT_FOUND, how  # the same answer: no oracle
    # the token of the attacker's own object is not a key to the victim's
    assert (await service.read(own_id, own_token, key=attacker)).status == 200
    # without a key the token alone opens nothing either
    assert (await service.read(upload_id, token, key=None)).status == 401
    # the victim's object is unchanged
    assert (await service.read(upload_id, token, key=victim)).body == data


def _capability(upload_id: str, done: Answer, *, expires_at: int) -> RelayCapability:
    sha256 = done.headers["Upload-Relay-Sha256"]
    return RelayCapability(upload_id, sha256, int(done.headers["Upload-Offset"]), expires_at)


async def test_attack_deleting_another_principals_relay_object_without_its_token(
    service: Relay,
) -> None:
    victim = await service.make_key(Role.CLIENT, "victim", fingerprint_of("victim"))
    attacker = await service.make_key(Role.CLIENT, "attacker", fingerprint_of("attacker"))
    data = content(6000, seed=10)
    upload_id, token, _ = await service.put_relay(data, key=victim)
    _, own_token, _ = await service.put_relay(content(20, seed=11), key=attacker)
    # the attacker knows the upload id: DELETE with its key only, then with its own token
    assert same_refusal(await service.remove(upload_id, None, key=attacker)) == NOT_FOUND
    assert same_refusal(await service.remove(upload_id, own_token, key=attacker)) == NOT_FOUND
    # nor through tus: another principal's upload is not found there either
    got = await service.tus("DELETE", f"/files/{upload_id}", attacker)
    assert got.status == 404
    # the victim's object is still there, byte for byte
    assert (await service.read(upload_id, token, key=victim)).body == data


async def test_attack_filling_the_disk_with_relay_uploads(
    start_storage_service: StartService,
) -> None:
    service: Relay = await start_storage_service(
        Relay,
        disk_reserve_bytes=0,
        upload_quota_count=3,
        upload_quota_bytes=300_000,
        relay_ttl_s=TTL_S,
    )
    attacker = await service.make_key(Role.CLIENT, "attacker", fingerprint_of("attacker"))
    # completed relay objects no longer count as open uploads: the attacker tries to
    # pile them up, 100 kB at a time, past its quota
    stored = [await service.put_relay(content(100_000, seed=n), key=attacker) for n in range(3)]
    refused, _ = await service.start_relay(100_000, key=attacker)
    assert (refused.status, refused.code) == (413, "QUOTA_EXCEEDED")
    small, _ = await service.start_relay(1, key=attacker)  # the count is at the quota too
    assert (small.status, small.code) == (413, "QUOTA_EXCEEDED")
    assert service.blob_count() == 3
    # a deleted relay object gives its room back; nobody else's quota was touched
    upload_id, token, _ = stored[0]
    assert (await service.remove(upload_id, token, key=attacker)).status == 204
    again, _ = await service.start_relay(100_000, key=attacker)
    assert again.status == 201
    other = await service.make_key(Role.CLIENT, "other", fingerprint_of("other"))
    assert (await service.start_relay(100_000, key=other))[0].status == 201


async def test_attack_an_unfinished_relay_upload_expires(service: Relay) -> None:
    attacker = await service.make_key(Role.CLIENT, "attacker", fingerprint_of("attacker"))
    created, path = await service.start_relay(200_000, key=attacker)
    assert created.status == 201
    # the attacker sends half the bytes and leaves the rest hanging
    half = await service.patch(path, 0, content(100_000), key=attacker)
    assert half.status == 204 and "Upload-Relay-Token" not in half.headers
    expires = parsedate_to_datetime(half.headers["Upload-Expires"])
    service.app[TUS_KEY].now = lambda: expires.timestamp() + 1
    late = await service.patch(path, 100_000, content(100_000, seed=2), key=attacker)
    assert (late.status, late.code) == (410, "GONE")
    upload_id = path.rsplit("/", 1)[1]
    report = await service.app[UPLOADS_KEY].cleanup(datetime.now(UTC) + timedelta(days=2))
    assert upload_id in report.uploads
    assert await service.db.get_upload(upload_id) is None
    assert service.partial_content(upload_id) is None
    assert same_refusal(await service.read(upload_id, "x")) == NOT_FOUND


# ------------------------------------------------------------------ the migration


_INSERT_UPLOAD = (
    "INSERT INTO uploads (upload_id, file_name, total_size, user_id, user_role,"
    " content_type, chunk_size, status, created_at, updated_at, owner{relay})"
    " VALUES (:upload_id, 'a.bin', 5, 'u', 'r', 'x/y', 5, :status,"
    " '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', 'o'{value})"
)


async def test_migration_0004_adds_the_relay_column_and_its_index_and_takes_them_back(
    storage_database: str | None, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from alembic import command
    from sqlalchemy import inspect, text

    from signaling.db import StorageDB
    from signaling.db_engine import alembic_config

    if storage_database is None:
        url = f"sqlite:///{tmp_path / 'before.db'}"
    else:
        url = request.getfixturevalue("postgres_engine").new_database()
    db = StorageDB(url)
    config = alembic_config(db.url)
    plain, relay_done, relay_open = ("ab" + "0" * 30), ("cd" + "0" * 30), ("ef" + "0" * 30)

    def to(revision: str, down: bool = False) -> Any:
        def run(sync_conn: Any) -> None:
            config.attributes["connection"] = sync_conn
            (command.downgrade if down else command.upgrade)(config, revision)

        return run

    def schema(sync: Any) -> tuple[list[str], dict[str, list[str]]]:
        found = inspect(sync)
        columns = [column["name"] for column in found.get_columns("uploads")]
        indexes = {i["name"]: list(i["column_names"]) for i in found.get_indexes("uploads")}
        return columns, indexes

    try:
        async with db.write() as conn:
            await conn.run_sync(to("0003"))
            insert = text(_INSERT_UPLOAD.format(relay="", value=""))
            await conn.execute(insert, {"upload_id": plain, "status": "completed"})
        assert await db.migrate() == "0003"
        assert await db.current() == "0004"
        before = await db.get_upload(plain)
        assert before is not None and before.relay is False  # an earlier upload is no relay
        assert await db.expired_relay_objects("2100-01-01T00:00:00Z") == []
        async with db.write() as conn:
            columns, indexes = await conn.run_sync(schema)
            assert indexes["uploads_relay"] == ["relay", "status", "updated_at"]
            if storage_database is None:  # the cleanup's query runs on the index
                query = (
                    "EXPLAIN QUERY PLAN SELECT * FROM uploads WHERE relay = 1"
                    " AND status = 'completed' AND updated_at < '2100-01-01T00:00:00Z'"
                )
                plan = " ".join(str(row[-1]) for row in (await conn.execute(text(query))).all())
                assert "uploads_relay" in plan, plan
            insert = text(_INSERT_UPLOAD.format(relay=", relay", value=", 1"))
            await conn.execute(insert, {"upload_id": relay_done, "status": "completed"})
            await conn.execute(insert, {"upload_id": relay_open, "status": "uploading"})
        expired = await db.expired_relay_objects("2100-01-01T00:00:00Z")
        assert [record.upload_id for record in expired] == [relay_done]
        async with db.write() as conn:  # and back: the relay objects, index and column go
            await conn.run_sync(to("0003", down=True))
            columns, indexes = await conn.run_sync(schema)
            rows = (await conn.execute(text("SELECT upload_id FROM uploads"))).all()
        assert "relay" not in columns and "uploads_relay" not in indexes
        assert [row[0] for row in rows] == [plain]  # a relay object is no plain upload
        assert await db.migrate() == "0003"
        async with db.write() as conn:
            columns, indexes = await conn.run_sync(schema)
        assert "relay" in columns and "uploads_relay" in indexes
    finally:
        await db.close()


def test_the_upload_id_and_token_grammar_is_the_frames_own() -> None:
    """What the service reads is what RELAY_PART may name: one grammar, in protocol."""
    assert relay_objects.UPLOAD_ID_PATTERN is relay_messages.UPLOAD_ID_PATTERN
    assert relay_objects.TOKEN_PATTERN is relay_messages.TOKEN_PATTERN
