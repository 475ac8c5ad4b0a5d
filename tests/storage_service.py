"""One live storage service for the tests: a real server on loopback, real HTTP, a real
database (a SQLite file, or PostgreSQL when the fixture runs on it), real blobs (a
folder, or an S3 bucket on moto's server when the fixture runs on it), and one API
client helper for every route.

``start_storage_service(root, **settings)`` starts it; the fixture in
``tests/conftest.py`` wraps it so that each test gets a server of its own. ``KEY`` is
the admin key of the settings; :meth:`StorageService.make_key` makes worker and client
keys the way ``rtc-signaling keys add`` does (in the service's real database).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from signaling.app import start_server
from signaling.blobs import make_backend
from signaling.config import SignalingSettings
from signaling.db import StorageDB
from signaling.keys import Role
from tests.engine_s3 import S3Bucket, StoredObject

__all__ = ["AUTH", "KEY", "Answer", "StorageService", "fingerprint_of", "service_settings"]

KEY = "storage-key-123"
AUTH = {"X-API-Key": KEY}


def service_settings(root: Path, **overrides: Any) -> SignalingSettings:
    """Settings of a storage service at ``root`` on a free loopback port, with ``KEY``."""
    return SignalingSettings(
        host="127.0.0.1", port=0, storage_path=root, storage_api_key=KEY, **overrides
    )


def fingerprint_of(name: str) -> str:
    """A made-up fingerprint (64 lowercase hex) for a test principal called ``name``."""
    return hashlib.sha256(name.encode()).hexdigest()


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status, body (JSON-decoded when JSON, else bytes), headers."""

    status: int
    body: Any
    headers: dict[str, str]

    @property
    def code(self) -> str | None:
        """The error code of a JSON error answer, else ``None``."""
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return str(self.body["error"]["code"])
        return None


@dataclass
class StorageService:
    """A running storage service and an HTTP client for its routes."""

    root: Path
    session: aiohttp.ClientSession
    runner: web.AppRunner
    port: int
    overrides: dict[str, Any] = field(default_factory=dict)
    _db: StorageDB | None = None

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    async def restart(self, **extra: Any) -> None:
        """Stop and start the server on the same folder (settings plus ``extra``)."""
        await self.runner.cleanup()
        settings = service_settings(self.root, **{**self.overrides, **extra})
        self.runner, self.port = await start_server(settings)

    async def stop(self) -> None:
        """Stop the server (and close this helper's database connections)."""
        await self.runner.cleanup()
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def database_url(self) -> str:
        """The URL of the service's database."""
        url = service_settings(self.root, **self.overrides).database_url_value
        assert url is not None
        return url

    @property
    def db(self) -> StorageDB:
        """The service's database, as another process would open it (coroutines)."""
        if self._db is None:
            self._db = StorageDB(self.database_url)
        return self._db

    async def make_key(self, role: Role, name: str, principal: str | None = None) -> str:
        """A new key of ``role`` (as ``rtc-signaling keys add`` makes it)."""
        _, key = await self.db.add_key(role, name, principal)
        return key

    async def request(
        self,
        method: str,
        path: str,
        *,
        key: str | None = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        data: Any = None,
        body: Any = None,
    ) -> Answer:
        """One request with ``key`` (``X-API-Key``) and/or ``token``
        (``X-Download-Token``); the answer, JSON decoded when it is JSON."""
        sent = dict(headers or {})
        if key is not None:
            sent["X-API-Key"] = key
        if token is not None:
            sent["X-Download-Token"] = token
        async with self.session.request(
            method, self.url(path), headers=sent, data=data, json=body
        ) as response:
            raw = await response.read()
            payload: Any = raw
            if raw and response.content_type == "application/json":
                payload = json.loads(raw)
            return Answer(response.status, payload, dict(response.headers))

    async def store_result(
        self, key: str, owner: str, job_id: str, data: bytes, **headers: str
    ) -> Answer:
        """``POST /upload`` of ``data`` as the raw body, for ``owner``."""
        sent = {"X-Job-Id": job_id, "X-Owner": owner, "Content-Type": "application/zip"}
        sent.update({name.replace("_", "-"): value for name, value in headers.items()})
        return await self.request("POST", "/upload", key=key, headers=sent, data=data)

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        data: bytes | aiohttp.FormData | None = None,
    ) -> tuple[int, Any]:
        """One request (JSON ``body`` or raw ``data``); the status and the JSON answer."""
        async with self.session.request(
            method,
            self.url(path),
            json=body,
            data=data,
            headers=AUTH if headers is None else headers,
        ) as response:
            return response.status, await response.json()

    # ------------------------------------------------------------------ results API

    async def upload(
        self, job_id: str | None, data: bytes | None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """``POST /upload`` as a multipart form (``job_id`` and ``file`` when given)."""
        form = aiohttp.FormData()
        if job_id is not None:
            form.add_field("job_id", job_id)
        if data is not None:
            form.add_field("file", data, filename="result.bin")
        return await self.call("POST", "/upload", headers=headers, data=form)

    async def upload_raw(self, job_id: str | None, data: bytes) -> tuple[int, dict[str, Any]]:
        """``POST /upload`` with a raw body, ``X-Job-Id`` and a Bearer key."""
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/octet-stream"}
        if job_id is not None:
            headers["X-Job-Id"] = job_id
        return await self.call("POST", "/upload", headers=headers, data=data)

    async def download(self, job_id: str, keep: bool = False) -> tuple[int, bytes]:
        """``GET /download/{job_id}`` (``?keep=true`` with ``keep``): status and bytes."""
        query = "?keep=true" if keep else ""
        async with self.session.get(self.url(f"/download/{job_id}{query}"), headers=AUTH) as got:
            return got.status, await got.read()

    async def delete(self, job_id: str) -> tuple[int, dict[str, Any]]:
        """``DELETE /delete/{job_id}``."""
        return await self.call("DELETE", f"/delete/{job_id}")

    async def records(self) -> dict[str, dict[str, Any]]:
        """``GET /list`` by job id."""
        status, body = await self.call("GET", "/list")
        assert status == 200
        return {record["job_id"]: record for record in body["files"]}

    async def wait_status(self, job_id: str, status: int) -> None:
        """Poll until a kept download answers ``status`` (auto-delete ends after the body)."""
        deadline = asyncio.get_running_loop().time() + 5.0
        while (await self.download(job_id, keep=True))[0] != status:
            assert asyncio.get_running_loop().time() < deadline, f"never got {status}"
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------------ the blob store

    @property
    def bucket(self) -> S3Bucket | None:
        """The bucket of the blobs when the service runs on the S3 backend."""
        if self.overrides.get("storage_backend") != "s3":
            return None
        return S3Bucket(self.overrides["s3_endpoint_url"], self.overrides["s3_bucket"])

    def blobs(self) -> list[Any]:
        """Every stored blob: its file (folder backend) or its object (S3), each with
        ``name`` (the sha256) and ``read_bytes()``."""
        if (bucket := self.bucket) is not None:
            return [StoredObject(bucket, key) for key in bucket.object_keys("blobs/")]
        return sorted(path for path in (self.root / "blobs").rglob("*") if path.is_file())

    def blob_names(self) -> list[str]:
        """The sha256 of every stored blob."""
        return [blob.name for blob in self.blobs()]

    def blob_bytes(self, sha256: str) -> bytes:
        """The stored bytes of ``sha256``."""
        if (bucket := self.bucket) is not None:
            return bucket.get(f"blobs/{sha256}")
        return (self.root / "blobs" / sha256[:2] / sha256).read_bytes()

    def put_stray_blob(self, sha256: str, data: bytes) -> None:
        """A blob no record references, put behind the service's back."""
        if (bucket := self.bucket) is not None:
            bucket.put(f"blobs/{sha256}", data)
            return
        folder = self.root / "blobs" / sha256[:2]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / sha256).write_bytes(data)

    def partials(self, key: str = "") -> list[str]:
        """What the partial uploads whose key starts with ``key`` leave in the store:
        files of ``partial/`` (folder) or objects and multipart uploads under
        ``partial/`` (S3), as names below ``partial/``."""
        if (bucket := self.bucket) is not None:
            names = bucket.object_keys(f"partial/{key}") + bucket.multipart_keys(f"partial/{key}")
            return sorted(name.removeprefix("partial/") for name in names)
        folder = self.root / "partial"
        if not folder.is_dir():
            return []
        return sorted(path.name for path in folder.iterdir() if path.name.startswith(key))

    def partial_content(self, key: str) -> bytes | None:
        """The bytes the partial ``key`` holds from offset 0 (S3: from its piece objects,
        which is where bytes short of a part are), or ``None`` when it has none."""
        if (bucket := self.bucket) is None:
            path = self.root / "partial" / f"{key}.part"
            return path.read_bytes() if path.exists() else None
        held = bytearray()
        for name in bucket.object_keys(f"partial/{key}/piece/"):
            start, end = (int(n) for n in name.rsplit("/", 1)[-1].split("-"))
            held[start:end] = bucket.get(name)
        return bytes(held) if held else None

    def put_stray_partial(self, key: str, data: bytes) -> None:
        """A partial upload with no record, put behind the service's back."""
        if (bucket := self.bucket) is not None:
            bucket.put(f"partial/{key}/piece/{0:016d}-{len(data):016d}", data)
            return
        (self.root / "partial" / f"{key}.part").write_bytes(data)

    async def held(self, key: str) -> list[list[int]]:
        """The byte ranges the partial ``key`` records as durable."""
        settings = service_settings(self.root, **self.overrides)
        backend = make_backend(settings)
        await backend.open()
        try:
            return [list(pair) for pair in await backend.upload_ranges(key)]
        finally:
            await backend.close()
