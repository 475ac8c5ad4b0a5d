"""The storage service's database on both engines: two instances sharing one database
race as attackers would (one quota, one job id: exactly one winner; one request at a
time changing a tus upload), migrations adopt
a database of the earlier SQLite-only code, instances migrating at once, the ``db``
command, and the URL's password kept out of what is printed.

Real servers on loopback, a real SQLite file or a real PostgreSQL server
(:mod:`tests.engine_postgres`, skipped with the reason when it cannot run).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from signaling.config import SignalingSettings
from signaling.db_engine import async_url, head_revision
from signaling.keys import Role, hash_key
from signaling.tus import TUS_KEY
from tests.conftest import StartService
from tests.storage_service import KEY, StorageService, fingerprint_of, service_settings
from tests.test_tus import Tus

REPO = Path(__file__).resolve().parents[1]
VICTIM = fingerprint_of("victim")
ATTACKER = fingerprint_of("attacker")


async def two_instances(start: StartService, **settings: Any) -> list[StorageService]:
    """Two storage services on one database and one storage folder, started at once
    (so their migrations run at the same time)."""
    return list(await asyncio.gather(start(**settings), start(**settings)))


# ------------------------------------------------------------------ races between instances


async def test_two_instances_let_one_request_at_a_time_change_a_tus_upload(
    start_storage_service: StartService, storage_engines: tuple[str, str]
) -> None:
    """While a PATCH streams into an upload on one instance, a PATCH or DELETE of the
    same upload on the other answers 423 (PostgreSQL's advisory lock), nothing of it is
    written; once the first ends the other instance goes on from its offset."""
    if storage_engines[0] != "postgresql":
        pytest.skip("instances share an upload's lock through PostgreSQL; SQLite serves one")
    first, second = await asyncio.gather(start_storage_service(Tus), start_storage_service(Tus))
    assert isinstance(first, Tus) and isinstance(second, Tus)
    url = await first.create(1000)
    upload_id = url.rsplit("/", 1)[1]
    release = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        yield b"s" * 100
        await release.wait()

    streaming = asyncio.create_task(first.patch(url, 0, stalling()))
    try:
        async with asyncio.timeout(10):
            while upload_id not in first.runner.app[TUS_KEY]._busy:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # the first bytes are on their way
        other = await second.patch(url, 0, b"t" * 10)
        assert (other.status, other.code) == (423, "UPLOAD_LOCKED")
        assert (await second.tus("DELETE", url)).status == 423
    finally:
        release.set()
    assert (await streaming).status == 204
    assert await second.offset(url) == 100
    assert (await second.patch(url, 100, b"u" * 900)).status == 204
    status = await second.status(upload_id)
    assert status["status"] == "completed"
    assert status["sha256"] == hashlib.sha256(b"s" * 100 + b"u" * 900).hexdigest()


async def test_two_instances_give_one_quota_one_winner(start_storage_service: StartService) -> None:
    first, second = await two_instances(
        start_storage_service, upload_quota_count=1, upload_quota_bytes=10**9
    )
    attacker = await first.make_key(Role.CLIENT, "attacker", ATTACKER)
    body = {"file_name": "a.bin", "total_size": 1000, "user_id": "u", "user_role": "r"}
    for _ in range(3):  # the attacker opens uploads on both instances at the same moment
        answers = await asyncio.gather(
            *(
                service.request("POST", "/api/upload/init", key=attacker, body=body)
                for service in (first, second) * 4
            )
        )
        winners = [answer for answer in answers if answer.status == 201]
        assert len(winners) == 1, answers
        assert {(a.status, a.code) for a in answers if a.status != 201} == {(413, "QUOTA_EXCEEDED")}
        cancel = {"upload_id": winners[0].body["upload_id"]}
        assert (
            await first.request("POST", "/api/upload/cancel", key=attacker, body=cancel)
        ).status == 200


async def test_two_instances_give_one_job_id_one_owner_of_its_content(
    start_storage_service: StartService,
) -> None:
    first, second = await two_instances(start_storage_service)
    victim = await first.make_key(Role.CLIENT, "victim", VICTIM)
    honest = await first.make_key(Role.WORKER, "gpu-1")
    rogue = await first.make_key(Role.WORKER, "rogue")
    for round_ in range(4):  # rogue workers race the honest one for the victim's job
        job = f"run{round_}"
        mine = b"the real results %d" % round_
        contents = [mine] + [b"forged results %d/%d" % (round_, n) for n in range(3)]
        answers = await asyncio.gather(
            *(
                (first, second)[n % 2].store_result((honest, rogue)[n > 0], VICTIM, job, data)
                for n, data in enumerate(contents)
            )
        )
        statuses = sorted((answer.status, answer.code) for answer in answers)
        assert statuses == [(201, None)] + [(409, "JOB_EXISTS")] * 3, answers
        winner = next(data for data, a in zip(contents, answers, strict=True) if a.status == 201)
        for service in (first, second):  # both instances serve the winner's bytes
            got = await service.request("GET", f"/download/{job}?keep=true", key=victim)
            assert (got.status, got.body) == (200, winner)
        listing = (await second.request("GET", "/list", key=victim)).body["files"]
        assert [f["job_id"] for f in listing].count(job) == 1
    assert len(first.blobs()) == 4  # the losers' blobs were dropped, the winners' kept


# ------------------------------------------------------------------ migrations

_PREVIOUS_SCHEMA = """
CREATE TABLE uploads (
    upload_id TEXT PRIMARY KEY, file_name TEXT NOT NULL, total_size INTEGER NOT NULL,
    user_id TEXT NOT NULL, user_role TEXT NOT NULL, content_type TEXT NOT NULL,
    chunk_size INTEGER NOT NULL, status TEXT NOT NULL, created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL, key TEXT UNIQUE, sha256 TEXT, file_path TEXT, mime_type TEXT,
    deleted INTEGER NOT NULL DEFAULT 0, deleted_at TEXT,
    owner TEXT NOT NULL DEFAULT ':legacy');
CREATE INDEX uploads_sha256 ON uploads (sha256, deleted);
CREATE INDEX uploads_status ON uploads (status, updated_at);
CREATE INDEX uploads_owner ON uploads (owner, status, updated_at);
CREATE TABLE files (
    owner TEXT NOT NULL, job_id TEXT NOT NULL, file_path TEXT NOT NULL,
    file_size INTEGER NOT NULL, sha256 TEXT NOT NULL,
    mime_type TEXT NOT NULL DEFAULT 'application/octet-stream', uploaded_at TEXT NOT NULL,
    downloaded_at TEXT, deleted INTEGER NOT NULL DEFAULT 0, deleted_at TEXT,
    PRIMARY KEY (owner, job_id));
CREATE INDEX files_sha256 ON files (sha256, deleted);
CREATE INDEX files_job ON files (job_id);
CREATE TABLE api_keys (
    key_id TEXT PRIMARY KEY, key_hash TEXT NOT NULL, role TEXT NOT NULL, name TEXT NOT NULL,
    principal TEXT NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT);
PRAGMA user_version = 3;
"""
"""The schema the SQLite-only code wrote (its version 3), as it made it."""


async def test_a_database_of_the_previous_code_is_adopted(tmp_path: Path) -> None:
    import hashlib

    from signaling.app import start_server

    root = tmp_path / "store"
    content = b"kept across the upgrade"
    sha256 = hashlib.sha256(content).hexdigest()
    (root / "blobs" / sha256[:2]).mkdir(parents=True)
    (root / "blobs" / sha256[:2] / sha256).write_bytes(content)
    keys = {  # made in this order within one second: the listing keeps it
        "bbbbbbbbbbbbbbbb": "rtck_bbbbbbbbbbbbbbbb_" + "b" * 43,
        "aaaaaaaaaaaaaaaa": "rtck_aaaaaaaaaaaaaaaa_" + "a" * 43,
    }
    with sqlite3.connect(root / "storage.db") as conn:
        conn.executescript(_PREVIOUS_SCHEMA)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(
            "INSERT INTO files VALUES (?, 'run7', ?, ?, ?, 'text/plain', "
            "'2026-01-01T00:00:00Z', NULL, 0, NULL)",
            (VICTIM, f"blobs/{sha256[:2]}/{sha256}", len(content), sha256),
        )
        for key_id, key in keys.items():
            role, principal = ("client", VICTIM) if key_id[0] == "b" else ("worker", "key:x")
            conn.execute(
                "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, '2026-01-01T00:00:00Z', NULL)",
                (key_id, hash_key(key), role, f"k{key_id[0]}", principal),
            )
    conn.close()
    runner, port = await start_server(service_settings(root))
    import aiohttp

    try:
        async with aiohttp.ClientSession() as session:
            service = StorageService(root, session, runner, port)
            got = await service.request("GET", "/download/run7?keep=true", key=keys["b" * 16])
            assert (got.status, got.body) == (200, content)
            assert await service.db.current() == head_revision()
            assert [row.key_id for row in await service.db.list_keys()] == list(keys)
            stored = await service.store_result(keys["a" * 16], VICTIM, "run8", b"new")
            assert stored.status == 201
            await service.stop()
    finally:
        await runner.cleanup()
    with sqlite3.connect(root / "storage.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3  # older code opens it
        assert conn.execute("SELECT count(*) FROM files").fetchone()[0] == 2
        columns = {row[1] for row in conn.execute("PRAGMA table_info(uploads)")}
        assert {"result_owner", "result_job_id"} <= columns
    conn.close()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``rtc-signaling ARGS`` as a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "signaling", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        check=False,
    )


async def test_db_command_shows_and_upgrades_the_schema_without_the_password(
    storage_database: str | None, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if storage_database is None:
        url = f"sqlite:///{tmp_path / 'fresh.db'}"
    else:  # a new, empty database; trust authentication: any password is accepted
        fresh = request.getfixturevalue("postgres_engine").new_database()
        url = fresh.replace("postgres@", "postgres:hunter2-secret@")
    env = {"RTC_DATABASE_URL": url}
    before = await asyncio.to_thread(run_cli, "db", "current", env=env)
    assert before.returncode == 1 and "none" in before.stdout, before.stderr
    # several instances upgrading at once (each its own process) end at the newest schema
    upgrades = await asyncio.gather(
        *(asyncio.to_thread(run_cli, "db", "upgrade", env=env) for _ in range(3))
    )
    for done in upgrades:
        assert done.returncode == 0, done.stderr
    after = await asyncio.to_thread(run_cli, "db", "current", env=env)
    assert after.returncode == 0 and head_revision() in after.stdout, after.stderr
    for done in (before, *upgrades, after):
        assert "hunter2" not in done.stdout + done.stderr


def test_database_url_setting() -> None:
    settings = SignalingSettings(storage_path=Path("/s"), storage_api_key=KEY)
    assert settings.database_url_value == "sqlite:////s/storage.db"
    remote = SignalingSettings(
        storage_path=Path("/s"),
        storage_api_key=KEY,
        database_url="postgresql://u:pw@db:5432/rtc?sslmode=require",
    )
    assert "pw" not in repr(remote)
    url = async_url(str(remote.database_url_value))
    assert (url.drivername, url.query) == ("postgresql+asyncpg", {"ssl": "require"})
    with pytest.raises(ValidationError, match="database URL"):
        SignalingSettings(database_url="mysql://u@h/db")
    with pytest.raises(ValueError, match="needs a file"):
        async_url("sqlite://")
