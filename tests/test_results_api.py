"""The result store: a real server on loopback, real HTTP, a real SQLite file and disk."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from pydantic import ValidationError

from signaling.__main__ import help_text, main, settings_from_args
from signaling.app import start_server
from signaling.config import SignalingSettings
from signaling.db_engine import head_revision
from signaling.results_routes import DownloadQuery
from tests.conftest import StartService
from tests.storage_service import AUTH, KEY, StorageService, service_settings

SMALL_MAX = 4096


def make_settings(root: Path, **extra: Any) -> SignalingSettings:
    return service_settings(root, storage_max_file_size=SMALL_MAX, **extra)


@pytest_asyncio.fixture
async def store(start_storage_service: StartService) -> StorageService:
    return await start_storage_service(storage_max_file_size=SMALL_MAX)


def error_code(body: dict[str, Any]) -> str:
    assert set(body["error"]) == {"code", "message", "timestamp"}
    return str(body["error"]["code"])


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/upload"),
        ("GET", "/download/job1"),
        ("DELETE", "/delete/job1"),
        ("GET", "/list"),
    ],
)
async def test_every_route_needs_the_key(store: StorageService, method: str, path: str) -> None:
    for headers in (
        {},
        {"X-API-Key": "wrong"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {KEY}"},
    ):
        async with store.session.request(method, store.url(path), headers=headers) as response:
            assert response.status == 401
            assert error_code(await response.json()) == "UNAUTHORIZED"
    for headers in ({"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"}):
        async with store.session.request(method, store.url(path), headers=headers) as response:
            assert response.status != 401


async def test_health_is_open_and_shows_storage(store: StorageService) -> None:
    async with store.session.get(store.url("/health")) as response:
        assert response.status == 200
        body = await response.json()
    assert body["status"] == "ok"
    assert body["storage"] is True


# --------------------------------------------------------------------------- upload/download


async def test_multipart_upload_and_download(store: StorageService) -> None:
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
    status, body = await store.upload("job-1", data)
    assert status == 201
    token, expires_at = body.pop("download_token"), body.pop("expires_at")
    assert body == {
        "job_id": "job-1",
        "owner": "key:admin",  # an admin's upload without X-Owner is its own
        "download_url": "/download/job-1",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token) and "::" not in token
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", expires_at)
    assert store.blob_bytes(body["sha256"]) == data
    assert store.partials() == []
    assert await store.download("job-1", keep=True) == (200, data)
    assert (await store.records())["job-1"]["downloaded_at"] is not None


async def test_raw_upload_and_auto_delete(store: StorageService) -> None:
    data = b"raw result bytes\n" * 100
    status, body = await store.upload_raw("raw.job_2", data)
    assert status == 201
    assert (body["size"], body["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert await store.download("raw.job_2", keep=True) == (200, data)
    assert await store.download("raw.job_2") == (200, data)
    await store.wait_status("raw.job_2", 410)
    assert (await store.download("raw.job_2"))[0] == 410
    assert store.blobs() == []
    record = (await store.records())["raw.job_2"]
    assert record["deleted"] is True
    assert record["downloaded_at"] is not None


@pytest.mark.parametrize(
    ("query", "kept"),
    [
        ("keep=true", True),
        ("keep=TRUE", True),
        ("keep=%20yes%20", True),
        ("keep=1", True),
        ("keep=On", True),
        ("keep=false", False),
        ("keep=0", False),
        ("keep=maybe", False),  # documented: any other value does not keep
        ("keep=", False),
        ("other=1", False),
    ],
)
async def test_the_keep_query_parameter(store: StorageService, query: str, kept: bool) -> None:
    """Parsed by pydantic (DownloadQuery); junk never fails the download."""
    await store.upload("k", b"bytes")
    async with store.session.get(store.url(f"/download/k?{query}"), headers=AUTH) as response:
        assert (response.status, await response.read()) == (200, b"bytes")
    await store.wait_status("k", 200 if kept else 410)


def test_download_query_model() -> None:
    assert DownloadQuery.model_validate({}).keep is False
    assert DownloadQuery.model_validate({"keep": " YES "}).keep is True
    assert DownloadQuery.model_validate({"keep": "t"}).keep is False  # not a documented word
    assert DownloadQuery.model_validate({"keep": "off", "x": "y"}).keep is False


async def test_auto_delete_off_keeps_files(store: StorageService) -> None:
    await store.restart(auto_delete=False)
    await store.upload("keepme", b"abc")
    assert await store.download("keepme") == (200, b"abc")
    assert await store.download("keepme") == (200, b"abc")


async def test_delete_then_gone_and_unknown(store: StorageService) -> None:
    await store.upload("d1", b"to be deleted")
    status, body = await store.delete("d1")
    assert (status, body) == (200, {"job_id": "d1", "deleted": True})
    assert (await store.download("d1"))[0] == 410
    status, body = await store.delete("d1")
    assert (status, error_code(body)) == (410, "GONE")
    status, body = await store.delete("nope")
    assert (status, error_code(body)) == (404, "NOT_FOUND")
    async with store.session.get(store.url("/download/nope"), headers=AUTH) as response:
        assert response.status == 404
        assert error_code(await response.json()) == "NOT_FOUND"
    assert store.blobs() == []


async def test_upload_validation(store: StorageService) -> None:
    status, body = await store.upload(None, b"data")
    assert (status, error_code(body)) == (400, "MISSING_FIELD")
    status, body = await store.upload("job", None)
    assert (status, error_code(body)) == (400, "MISSING_FIELD")
    for bad in ("a/b", "x" * 65, "sp ace", "..%2f"):
        status, body = await store.upload(bad, b"data")
        assert (status, error_code(body)) == (400, "INVALID_FIELD"), bad
    status, body = await store.upload_raw(None, b"data")
    assert (status, error_code(body)) == (400, "MISSING_FIELD")
    status, body = await store.upload_raw("bad/id", b"data")
    assert (status, error_code(body)) == (400, "INVALID_FIELD")
    status, body = await store.upload_raw("empty", b"")
    assert (status, error_code(body)) == (400, "MISSING_FIELD")
    assert await store.records() == {}
    assert store.partials() == []


async def test_too_large(store: StorageService) -> None:
    status, body = await store.upload("big", b"x" * (SMALL_MAX + 1))
    assert (status, error_code(body)) == (413, "FILE_TOO_LARGE")
    status, body = await store.upload_raw("big", b"x" * (SMALL_MAX + 1))
    assert (status, error_code(body)) == (413, "FILE_TOO_LARGE")

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: caught while streaming
        for _ in range(4):
            yield b"y" * 2000

    headers = {**AUTH, "X-Job-Id": "big", "Content-Type": "application/octet-stream"}
    async with store.session.post(store.url("/upload"), data=chunked(), headers=headers) as resp:
        assert resp.status == 413
    status, _ = await store.upload("fits", b"x" * SMALL_MAX)
    assert status == 201
    assert set(await store.records()) == {"fits"}
    assert store.partials() == []


async def test_reupload_replaces_only_on_purpose(store: StorageService) -> None:
    await store.upload("job", b"first version")
    status, body = await store.upload("job", b"second version")
    assert (status, error_code(body)) == (409, "JOB_EXISTS")
    assert await store.download("job", keep=True) == (200, b"first version")
    # the same content again, declared (a retried upload whose answer was lost): no change
    first = {**AUTH, "X-Content-SHA256": hashlib.sha256(b"first version").hexdigest()}
    status, body = await store.upload("job", b"first version", first)
    assert status == 200 and body["sha256"] == hashlib.sha256(b"first version").hexdigest()
    status, body = await store.upload("job", b"second version", {**AUTH, "X-Replace": "true"})
    assert status == 201
    assert body["sha256"] == hashlib.sha256(b"second version").hexdigest()
    assert await store.download("job", keep=True) == (200, b"second version")
    assert [blob.read_bytes() for blob in store.blobs()] == [b"second version"]
    # re-uploading a deleted job brings it back
    await store.delete("job")
    await store.upload("job", b"third")
    assert await store.download("job", keep=True) == (200, b"third")


async def test_dedupe_shares_one_blob(store: StorageService) -> None:
    data = b"same content" * 50
    _, first = await store.upload("a", data)
    _, second = await store.upload_raw("b", data)
    assert first["sha256"] == second["sha256"]
    assert len(store.blobs()) == 1
    await store.delete("a")
    assert len(store.blobs()) == 1
    assert await store.download("b", keep=True) == (200, data)
    await store.delete("b")
    assert store.blobs() == []


async def test_list_content(store: StorageService) -> None:
    await store.upload("one", b"1")
    await store.upload("two", b"22")
    await store.delete("two")
    records = await store.records()
    assert set(records) == {"one", "two"}
    one = records["one"]
    assert one["size"] == 1 and one["sha256"] == hashlib.sha256(b"1").hexdigest()
    assert one["download_url"] == "/download/one"
    assert (one["deleted"], one["downloaded_at"], one["deleted_at"]) == (False, None, None)
    assert one["uploaded_at"].endswith("Z")
    assert records["two"]["deleted"] is True and records["two"]["deleted_at"] is not None


async def test_restart_keeps_records(store: StorageService) -> None:
    await store.upload("persist", b"survives a restart")
    await store.upload("gone", b"deleted before the restart")
    await store.delete("gone")
    stray = "f" * 64
    store.put_stray_blob(stray, b"orphan")
    await store.restart()
    assert await store.download("persist", keep=True) == (200, b"survives a restart")
    assert (await store.download("gone"))[0] == 410
    assert stray not in store.blob_names()  # unreferenced blobs are collected at start
    assert await store.db.current() == head_revision()
    if "database_url" not in store.overrides:
        with sqlite3.connect(store.root / "storage.db") as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_database_path_setting(tmp_path: Path) -> None:
    db = tmp_path / "elsewhere" / "records.db"
    runner, port = await start_server(make_settings(tmp_path / "s", database_path=db))
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{port}/upload", data=b"x", headers={**AUTH, "X-Job-Id": "j"}
            ) as response,
        ):
            assert response.status == 201
    finally:
        await runner.cleanup()
    assert db.exists()
    assert not (tmp_path / "s" / "storage.db").exists()


# --------------------------------------------------------------------------- settings / CLI


def test_storage_settings_and_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("RTC_SIGNALING_PORT", "PORT", "STORAGE_PATH", "STORAGE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PORT", "4321")
    assert SignalingSettings().port == 4321
    monkeypatch.setenv("RTC_SIGNALING_PORT", "1234")
    assert SignalingSettings().port == 1234
    plain = SignalingSettings()
    assert (plain.storage_enabled, plain.database_file, plain.auto_delete) == (False, None, True)
    with pytest.raises(ValidationError, match="STORAGE_API_KEY"):
        SignalingSettings(storage_path=tmp_path)
    monkeypatch.setenv("STORAGE_PATH", str(tmp_path))
    monkeypatch.setenv("STORAGE_API_KEY", "env-key")
    monkeypatch.setenv("AUTO_DELETE", "false")
    monkeypatch.setenv("STORAGE_MAX_FILE_SIZE", "99")
    env = settings_from_args([])
    assert (env.storage_path, env.storage_api_key_value) == (tmp_path, "env-key")
    assert (env.database_file, env.auto_delete, env.storage_max_file_size) == (
        tmp_path / "storage.db",
        False,
        99,
    )
    flags = settings_from_args(
        ["--storage-api-key", "flag-key", "--auto-delete", "--database-path", "/x/db.sqlite"]
    )
    assert (flags.storage_api_key_value, flags.auto_delete) == ("flag-key", True)
    assert flags.database_file == Path("/x/db.sqlite")
    text = help_text()
    for name in ("STORAGE_PATH", "STORAGE_API_KEY", "DATABASE_PATH", "AUTO_DELETE"):
        assert name in text


def test_cli_refuses_storage_without_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("STORAGE_API_KEY", raising=False)
    assert main(["--port", "0", "--storage-path", str(tmp_path)]) == 2
    assert "STORAGE_API_KEY" in capsys.readouterr().err
