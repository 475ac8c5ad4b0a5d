"""The storage service's keys and download tokens: the operator CLI (``rtc-signaling
keys``), what the database keeps, the token format, the secret file, and records of an
earlier schema (version 2, no owners)."""

from __future__ import annotations

import asyncio
import base64
import hmac
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signaling.__main__ import main
from signaling.capability import (
    MAX_TOKEN_CHARS,
    SECRET_FILE_NAME,
    TOKEN_CONTEXT,
    Capability,
    CapabilityError,
    CapabilityProblem,
    RelayCapability,
    issue,
    issue_relay,
    load_or_create_secret,
    verify,
    verify_relay,
)
from signaling.db import LEGACY_OWNER, StorageDB
from signaling.db_engine import head_revision
from signaling.keys import ADMIN_PRINCIPAL, ApiKey, Role, hash_key, parse_key
from tests.conftest import StartService
from tests.storage_service import KEY, fingerprint_of

CLIENT = fingerprint_of("client")


def list_keys(path: Path) -> list[ApiKey]:
    """The keys in the SQLite file ``path``."""

    async def run() -> list[ApiKey]:
        db = StorageDB(path)
        try:
            return await db.list_keys()
        finally:
            await db.close()

    return asyncio.run(run())


def keys(capsys: pytest.CaptureFixture[str], root: Path, *args: str) -> tuple[int, str, str]:
    status = main(["keys", *args, "--storage-path", str(root)])
    out = capsys.readouterr()
    return status, out.out, out.err


# ------------------------------------------------------------------ the CLI


def test_keys_add_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = keys(capsys, tmp_path, "add", "--role", "worker", "--name", "gpu-1")
    assert status == 0, err
    worker = out.strip()
    assert parse_key(worker) is not None and "shown once" in err
    status, out, err = keys(
        capsys, tmp_path, "add", "--role", "client", "--name", "alice", "--principal", CLIENT
    )
    assert status == 0, err
    client = out.strip()
    status, out, _ = keys(capsys, tmp_path, "list")
    assert status == 0
    lines = out.splitlines()
    assert len(lines) == 2 and CLIENT in lines[1] and "worker" in lines[0]
    assert worker not in out and client not in out  # never the keys
    # only hashes are stored
    raw = (tmp_path / "storage.db").read_bytes()
    for key in (worker, client):
        # the secret is everything after the id (it may itself hold "_")
        assert key.encode() not in raw and key.split("_", 2)[2].encode() not in raw
    rows = list_keys(tmp_path / "storage.db")
    assert {row.key_hash for row in rows} == {hash_key(worker), hash_key(client)}
    status, out, _ = keys(capsys, tmp_path, "revoke", "gpu-1")
    assert status == 0 and "revoked" in out
    status, _, err = keys(capsys, tmp_path, "revoke", "gpu-1")
    assert status == 1 and "no valid key" in err
    status, out, _ = keys(capsys, tmp_path, "list")
    assert "revoked" in out.splitlines()[0] and "valid" in out.splitlines()[1]


@pytest.mark.parametrize(
    "args",
    [
        ["add", "--role", "client", "--name", "nobody"],  # a client key needs a principal
        ["add", "--role", "client", "--name", "x", "--principal", "not-a-fingerprint"],
        ["add", "--role", "admin", "--name", "x", "--principal", CLIENT],
        ["add", "--role", "worker", "--name", "../x"],
    ],
)
def test_keys_add_refuses_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    status, out, err = keys(capsys, tmp_path, *args)
    assert status == 2 and out == "", err
    assert list_keys(tmp_path / "storage.db") == []


def test_keys_usage_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("STORAGE_PATH", "RTC_SIGNALING_STORAGE_PATH", "DATABASE_PATH"):
        monkeypatch.delenv(name, raising=False)
    assert main(["keys", "list"]) == 2  # no storage path
    assert "--storage-path" in capsys.readouterr().err
    assert main(["keys", "add", "--role", "emperor", "--name", "x"]) == 2
    assert "'worker', 'client' or 'admin'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["keys", "promote"])
    assert exit_info.value.code == 2


async def test_a_key_from_the_cli_works_against_the_server(
    start_storage_service: StartService, capsys: pytest.CaptureFixture[str]
) -> None:
    service = await start_storage_service()

    async def cli(*args: str) -> tuple[int, str, str]:  # its own process's event loop
        url = ["--database-url", service.database_url]
        return await asyncio.to_thread(keys, capsys, service.root, *args, *url)

    status, out, _ = await cli("add", "--role", "worker", "--name", "w")
    assert status == 0
    worker = out.strip()
    stored = await service.store_result(worker, CLIENT, "run7", b"results")
    assert stored.status == 201
    status, out, _ = await cli("add", "--role", "client", "--name", "c", "--principal", CLIENT)
    client = out.strip()
    got = await service.request("GET", "/download/run7?keep=true", key=client)
    assert (got.status, got.body) == (200, b"results")
    assert (await cli("revoke", "c"))[0] == 0
    got = await service.request("GET", "/download/run7?keep=true", key=client)
    assert (got.status, got.code) == (401, "KEY_REVOKED")


# ------------------------------------------------------------------ tokens

SECRET = bytes(range(32))
OWNERS = st.one_of(
    st.text("0123456789abcdef", min_size=64, max_size=64),
    st.from_regex(r"anon-[0-9a-f]{32}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True),
)
JOB_IDS = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(owner=OWNERS, job_id=JOB_IDS, digest=st.binary(min_size=32, max_size=32))
def test_tokens_round_trip_and_never_hold_a_frame_separator(
    owner: str, job_id: str, digest: bytes
) -> None:
    grant = Capability(owner, job_id, digest.hex(), int(time.time()) + 60)
    token = issue(SECRET, grant)
    assert "::" not in token and ":" not in token
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert verify(SECRET, token, time.time()) == grant


def test_every_changed_byte_of_a_token_is_refused() -> None:
    grant = Capability(CLIENT, "run7", "ab" * 32, 2_000_000_000)
    token = issue(SECRET, grant)

    def raw(text: str) -> bytes:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    for index in range(len(token)):
        for other in "AQgw-_":
            changed = token[:index] + other + token[index + 1 :]
            if raw(changed) == raw(token):  # the same bytes (unused bits of the last char)
                continue
            with pytest.raises(CapabilityError):
                verify(SECRET, changed, 1.0)
    with pytest.raises(CapabilityError) as info:
        verify(SECRET, token, 2_000_000_000)
    assert info.value.problem is CapabilityProblem.EXPIRED
    with pytest.raises(CapabilityError) as info:
        verify(b"\x01" * 32, token, 1.0)
    assert info.value.problem is CapabilityProblem.INVALID


RELAY_GRANT = RelayCapability("ab" * 16, "cd" * 32, 5000, 2_000_000_000)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "A" * (MAX_TOKEN_CHARS + 1),
        "é" * 10,
        "not base64!",
        "AAAA",  # shorter than a tag
        "A" * 64,  # a tag and a body of the wrong size, not signed
    ],
)
def test_a_malformed_token_of_either_kind_is_invalid(token: str) -> None:
    for check in (verify, verify_relay):
        with pytest.raises(CapabilityError) as info:
            check(SECRET, token, 1.0)
        assert info.value.problem is CapabilityProblem.INVALID


def test_neither_kind_of_token_is_taken_for_the_other() -> None:
    download = issue(SECRET, Capability(CLIENT, "run7", "ab" * 32, 2_000_000_000))
    relay = issue_relay(SECRET, RELAY_GRANT)
    assert verify_relay(SECRET, relay, 1.0) == RELAY_GRANT
    for check, token in ((verify, relay), (verify_relay, download)):
        with pytest.raises(CapabilityError) as info:
            check(SECRET, token, 1.0)
        assert info.value.problem is CapabilityProblem.INVALID
    # a relay body signed under the download context is still refused (another context)
    body = base64.urlsafe_b64decode(relay + "=" * (-len(relay) % 4))[:-32]
    forged = body + hmac.digest(SECRET, TOKEN_CONTEXT + body, "sha256")
    with pytest.raises(CapabilityError):
        verify_relay(SECRET, base64.urlsafe_b64encode(forged).decode().rstrip("="), 1.0)
    with pytest.raises(CapabilityError) as info:
        verify_relay(SECRET, relay, 2_000_000_000)
    assert info.value.problem is CapabilityProblem.EXPIRED


def test_the_secret_file_is_private_and_kept(tmp_path: Path) -> None:
    first = load_or_create_secret(tmp_path)
    path = tmp_path / SECRET_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first) == 32
    assert load_or_create_secret(tmp_path) == first
    os.chmod(path, 0o644)
    assert load_or_create_secret(tmp_path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_bytes(b"short")
    with pytest.raises(ValueError):
        load_or_create_secret(tmp_path)
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        load_or_create_secret(tmp_path)


# ------------------------------------------------------------------ an earlier schema


async def test_records_of_schema_2_belong_to_no_key_but_the_admins(
    start_storage_service: StartService,
) -> None:
    service = await start_storage_service()
    if "database_url" in service.overrides:
        pytest.skip("the earlier schemas exist only in SQLite files")
    stored = await service.store_result(KEY, CLIENT, "old-job", b"old bytes")
    assert stored.status == 201
    await service.stop()
    db = service.root / "storage.db"
    with sqlite3.connect(db) as conn:  # back to version 2: files keyed by job_id only
        conn.executescript(
            """
            CREATE TABLE files_v2 AS SELECT job_id, file_path, file_size, sha256, mime_type,
                uploaded_at, downloaded_at, deleted, deleted_at FROM files;
            DROP TABLE files; ALTER TABLE files_v2 RENAME TO files;
            DROP TABLE api_keys; DROP INDEX uploads_owner;
            ALTER TABLE uploads DROP COLUMN owner; DROP TABLE alembic_version;
            PRAGMA user_version = 2;
            """
        )
    await service.restart()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == (
            head_revision()
        )
    client = await service.make_key(Role.CLIENT, "c", CLIENT)
    got = await service.request("GET", "/download/old-job?keep=true", key=client)
    assert (got.status, got.code) == (404, "NOT_FOUND")
    got = await service.request("GET", "/download/old-job?keep=true", key=KEY)
    assert (got.status, got.body) == (200, b"old bytes")
    listing = (await service.request("GET", "/list", key=KEY)).body["files"]
    assert [(f["owner"], f["job_id"]) for f in listing] == [(LEGACY_OWNER, "old-job")]
    assert ADMIN_PRINCIPAL != LEGACY_OWNER
