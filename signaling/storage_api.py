"""The fallback result store: HTTP routes on the signaling server, backed by SQLite.

A worker whose client has gone uploads its results here; the client downloads them
later. Enabled when the server gets a storage path (see
:class:`~signaling.config.SignalingSettings`); the routes are then:

=================================  ====================================================
``POST /upload``                   multipart form (``job_id``, ``file``) or a raw body
                                   with ``X-Job-Id``; 201 ``{"job_id", "download_url",
                                   "size", "sha256"}``
``GET /download/{job_id}``         the bytes (200); ``?keep=true`` keeps the record
                                   when ``AUTO_DELETE`` is on; 404 unknown, 410 deleted
``DELETE /delete/{job_id}``        200 ``{"job_id", "deleted": true}``; 404 / 410
``GET /list``                      200 ``{"files": [record, ...]}``, deleted ones too
=================================  ====================================================

Authentication: every route above requires the configured key as ``X-API-Key: KEY``
or ``Authorization: Bearer KEY`` (compared in constant time), else 401. A key is
mandatory whenever storage is enabled (the settings refuse a storage path without
one), so the store is never open to anyone who can reach the port, whatever the
binding. ``GET /health`` stays open.

Errors are JSON ``{"error": {"code", "message", "timestamp"}}`` with the codes of
:class:`ApiErrorCode`.

Layout under the storage folder: ``blobs/ab/<sha256>`` holds each distinct content once
(uploads of identical bytes share a blob; a blob is removed when no live record uses
it), ``tmp/`` holds uploads in progress. An upload is streamed to a temporary file
(never whole in memory) while its size, SHA-256 and MIME type are computed, then
fsynced and renamed atomically into the blob store. Leftover temporary files and blobs
no live record uses are removed at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hmac
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import aiohttp
from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from loguru import logger

from protocol.messages import is_valid_job_id
from rtc_worker.storage import FileMetadata, MetadataBuilder, format_timestamp, fsync_directory
from signaling.config import SignalingSettings
from signaling.db import FileRecord, StorageDB

__all__ = [
    "CHUNK_BYTES",
    "STORE_KEY",
    "ApiError",
    "ApiErrorCode",
    "ResultStore",
    "StagedBlob",
    "api_key_guard",
    "error_response",
    "now_timestamp",
    "setup_storage",
]

CHUNK_BYTES = 1 << 20
"""Bytes written to or read from disk per call off the event loop (1 MiB)."""

MAX_FIELD_BYTES = 1024
"""Largest accepted text field of a multipart upload (``job_id``), in bytes."""

MULTIPART_OVERHEAD_BYTES = 1 << 20
"""Slack allowed over ``storage_max_file_size`` for a multipart body's framing, in bytes;
the file part itself is held to the exact limit while it streams."""


class ApiErrorCode(enum.StrEnum):
    """Codes of the storage routes' JSON errors, each with its HTTP status."""

    UNAUTHORIZED = "UNAUTHORIZED"  # 401: missing or wrong API key
    MISSING_FIELD = "MISSING_FIELD"  # 400: job_id or file missing
    INVALID_FIELD = "INVALID_FIELD"  # 400: malformed job_id, duplicate file part
    NOT_FOUND = "NOT_FOUND"  # 404: unknown job_id
    GONE = "GONE"  # 410: the record was deleted
    FILE_TOO_LARGE = "FILE_TOO_LARGE"  # 413: above storage_max_file_size
    STORAGE_ERROR = "STORAGE_ERROR"  # 500: disk or database failure
    UPLOAD_NOT_FOUND = "UPLOAD_NOT_FOUND"  # 404: unknown (or cancelled) resumable upload
    UPLOAD_COMPLETED = "UPLOAD_COMPLETED"  # 409: the resumable upload is already completed


_STATUS = {
    ApiErrorCode.UNAUTHORIZED: 401,
    ApiErrorCode.MISSING_FIELD: 400,
    ApiErrorCode.INVALID_FIELD: 400,
    ApiErrorCode.NOT_FOUND: 404,
    ApiErrorCode.GONE: 410,
    ApiErrorCode.FILE_TOO_LARGE: 413,
    ApiErrorCode.STORAGE_ERROR: 500,
    ApiErrorCode.UPLOAD_NOT_FOUND: 404,
    ApiErrorCode.UPLOAD_COMPLETED: 409,
}


class ApiError(Exception):
    """A request the store refuses; becomes a JSON error response."""

    def __init__(self, code: ApiErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        """The HTTP status of :attr:`code`."""
        return _STATUS[self.code]


def now_timestamp() -> str:
    """Now as ISO 8601 UTC with second precision."""
    return format_timestamp(datetime.now(UTC))


def error_response(code: ApiErrorCode, message: str) -> web.Response:
    """``{"error": {"code", "message", "timestamp"}}`` with the status of ``code``."""
    response = web.json_response(
        {"error": {"code": code.value, "message": message, "timestamp": now_timestamp()}},
        status=_STATUS[code],
    )
    if code is ApiErrorCode.UNAUTHORIZED:
        response.headers["WWW-Authenticate"] = 'Bearer realm="storage"'
    return response


@dataclass(slots=True)
class StagedBlob:
    """Content written to a temporary file under ``tmp/``, not yet in the blob store."""

    temp_path: Path
    metadata: FileMetadata

    def discard(self) -> None:
        _remove_quietly(self.temp_path)


def _remove_quietly(path: Path) -> None:
    """Remove ``path``; a file already gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _write_and_hash(file: IO[bytes], builder: MetadataBuilder, data: bytes) -> None:
    builder.update(data)
    file.write(data)


def _finish_temp(file: IO[bytes]) -> None:
    file.flush()
    os.fsync(file.fileno())
    file.close()


class ResultStore:
    """The blob folder plus the SQLite records; one per app.

    Changes that touch both the blobs and the records (placing a blob and recording it,
    deleting a record and dropping its blob) run under one lock, so a blob is never
    removed between another upload's dedupe check and its record.
    """

    def __init__(self, settings: SignalingSettings) -> None:
        if settings.storage_path is None or settings.database_file is None:
            raise ValueError("storage is not enabled in these settings")
        self.root = settings.storage_path
        self.blobs = self.root / "blobs"
        self.tmp = self.root / "tmp"
        self.db = StorageDB(settings.database_file)
        self.max_file_size = settings.storage_max_file_size
        self.auto_delete = settings.auto_delete
        self._lock = asyncio.Lock()

    def open(self) -> None:
        """Create the folders, migrate the database, remove leftovers (blocking).

        Raises:
            OSError: a folder cannot be created or cleaned.
            sqlite3.Error: the database cannot be opened or migrated.
        """
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp.iterdir():
            with contextlib.suppress(OSError):
                leftover.unlink()
        self.db.migrate()
        live = self.db.live_hashes()
        for shard in self.blobs.iterdir():
            if shard.is_dir():
                for blob in shard.iterdir():
                    if blob.name not in live:
                        logger.info("removing unreferenced blob {}", blob.name)
                        blob.unlink()

    @property
    def lock(self) -> asyncio.Lock:
        """The lock held by every change touching both blobs and records."""
        return self._lock

    def blob_path(self, sha256: str) -> Path:
        """Where the blob of ``sha256`` lives: ``blobs/ab/<sha256>``."""
        return self.blobs / sha256[:2] / sha256

    async def stage(self, chunks: AsyncIterator[bytes]) -> StagedBlob:
        """Stream ``chunks`` to a new temporary file, computing its metadata.

        Raises:
            ApiError: FILE_TOO_LARGE above :attr:`max_file_size` (the temp is removed).
            OSError: the disk failed (the temp is removed).
        """
        fd, name = await asyncio.to_thread(tempfile.mkstemp, dir=self.tmp, prefix="upload-")
        temp_path = Path(name)
        file = os.fdopen(fd, "wb")
        builder = MetadataBuilder()
        buffer = bytearray()
        try:
            async for chunk in chunks:
                if builder.size + len(buffer) + len(chunk) > self.max_file_size:
                    raise ApiError(
                        ApiErrorCode.FILE_TOO_LARGE,
                        f"the file is larger than {self.max_file_size} bytes",
                    )
                buffer += chunk
                if len(buffer) >= CHUNK_BYTES:
                    data, buffer = bytes(buffer), bytearray()
                    await asyncio.to_thread(_write_and_hash, file, builder, data)
            if buffer:
                await asyncio.to_thread(_write_and_hash, file, builder, bytes(buffer))
            await asyncio.to_thread(_finish_temp, file)
            metadata = await asyncio.to_thread(builder.finish)
        except BaseException:
            file.close()
            _remove_quietly(temp_path)
            raise
        return StagedBlob(temp_path, metadata)

    def place_blob(self, staged: StagedBlob) -> str:
        """Move the temp into the blob store (or drop it when the blob exists).

        Blocking; call it under :attr:`lock` and record a reference before releasing it.

        Returns:
            The blob's path relative to the storage folder.
        """
        target = self.blob_path(staged.metadata.sha256)
        if target.exists():
            staged.discard()
        else:
            target.parent.mkdir(exist_ok=True)
            os.replace(staged.temp_path, target)
            fsync_directory(target.parent)
        return target.relative_to(self.root).as_posix()

    def drop_blob_if_unused(self, sha256: str) -> None:
        """Remove the blob of ``sha256`` when no live record uses it (blocking, locked)."""
        if self.db.references(sha256) == 0:
            path = self.blob_path(sha256)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                fsync_directory(path.parent)
                logger.debug("removed blob {}", sha256)

    def _commit(self, job_id: str, staged: StagedBlob) -> FileRecord:
        relative = self.place_blob(staged)
        meta = staged.metadata
        record = FileRecord(
            job_id=job_id,
            file_path=relative,
            file_size=meta.size,
            sha256=meta.sha256,
            mime_type=meta.mime_type,
            uploaded_at=meta.created_at,
            downloaded_at=None,
            deleted=False,
            deleted_at=None,
        )
        old = self.db.put(record)
        if old is not None and old.sha256 != record.sha256:
            self.drop_blob_if_unused(old.sha256)
        return record

    async def commit(self, job_id: str, staged: StagedBlob) -> FileRecord:
        """Store ``staged`` as the content of ``job_id``, replacing any earlier record."""
        async with self._lock:
            return await asyncio.to_thread(self._commit, job_id, staged)

    def _delete(self, job_id: str) -> FileRecord:
        before = self.db.mark_deleted(job_id, now_timestamp())
        if before is None:
            if self.db.get(job_id) is None:
                raise ApiError(ApiErrorCode.NOT_FOUND, f"no file for job {job_id!r}")
            raise ApiError(ApiErrorCode.GONE, f"the file of job {job_id!r} was deleted")
        self.drop_blob_if_unused(before.sha256)
        return before

    async def delete(self, job_id: str) -> FileRecord:
        """Mark ``job_id`` deleted and drop its blob when nothing else uses it.

        Raises:
            ApiError: NOT_FOUND for an unknown job, GONE when already deleted.
        """
        async with self._lock:
            return await asyncio.to_thread(self._delete, job_id)

    async def get_live(self, job_id: str) -> FileRecord:
        """The live record of ``job_id``.

        Raises:
            ApiError: NOT_FOUND for an unknown job, GONE when deleted.
        """
        record = await asyncio.to_thread(self.db.get, job_id)
        if record is None:
            raise ApiError(ApiErrorCode.NOT_FOUND, f"no file for job {job_id!r}")
        if record.deleted:
            raise ApiError(ApiErrorCode.GONE, f"the file of job {job_id!r} was deleted")
        return record


STORE_KEY: web.AppKey[ResultStore] = web.AppKey("result_store", ResultStore)
"""The app's :class:`ResultStore` (present only when storage is enabled)."""


def setup_storage(app: web.Application, settings: SignalingSettings) -> bool:
    """Open the result store and add its routes to ``app`` when storage is enabled.

    Blocking (creates folders, migrates the database); call it while building the app.

    Returns:
        Whether storage is enabled (and the routes were added).

    Raises:
        OSError: the storage folder cannot be prepared.
        sqlite3.Error: the database cannot be opened or migrated.
    """
    if not settings.storage_enabled:
        return False
    store = ResultStore(settings)
    store.open()
    app[STORE_KEY] = store
    key = settings.storage_api_key_value
    if key is None:  # the settings refuse this; kept as a guard
        raise ValueError("storage requires an API key")
    guard = api_key_guard(key.encode("utf-8"))
    app.router.add_post("/upload", guard(_upload))
    app.router.add_get("/download/{job_id}", guard(_download))
    app.router.add_delete("/delete/{job_id}", guard(_delete))
    app.router.add_get("/list", guard(_list))
    logger.info("result store at {} (database {})", store.root, store.db.path)
    return True


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _presented_key(request: web.Request) -> str | None:
    key = request.headers.get("X-API-Key")
    if key is not None:
        return key
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def api_key_guard(expected: bytes) -> Callable[[Handler], Handler]:
    """Wrap a handler: check the API key, turn :class:`ApiError` into a JSON error."""

    def wrap(handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            given = _presented_key(request)
            if given is None or not hmac.compare_digest(given.encode("utf-8"), expected):
                return error_response(ApiErrorCode.UNAUTHORIZED, "missing or wrong API key")
            try:
                return await handler(request)
            except ApiError as error:
                response = error_response(error.code, error.message)
                if error.code is ApiErrorCode.FILE_TOO_LARGE:
                    response.force_close()
                return response
            except OSError as exc:
                logger.error("storage failure on {} {}: {}", request.method, request.path, exc)
                return error_response(ApiErrorCode.STORAGE_ERROR, "storage failure")

        return guarded

    return wrap


def _check_job_id(job_id: str | None) -> str:
    if job_id is None or job_id == "":
        raise ApiError(ApiErrorCode.MISSING_FIELD, "job_id is required")
    if not is_valid_job_id(job_id):
        raise ApiError(ApiErrorCode.INVALID_FIELD, "job_id must match [A-Za-z0-9._-]{1,64}")
    return job_id


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(CHUNK_BYTES):
        yield chunk


async def _read_field(part: BodyPartReader) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(MAX_FIELD_BYTES):
        data += chunk
        if len(data) > MAX_FIELD_BYTES:
            raise ApiError(ApiErrorCode.INVALID_FIELD, f"field {part.name!r} is too long")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(ApiErrorCode.INVALID_FIELD, f"field {part.name!r} is not UTF-8") from None


async def _next_part(reader: MultipartReader) -> Any:
    """The next part, or a 400 for a malformed body (missing or truncated boundaries,
    control characters in part headers) instead of a server error."""
    try:
        return await reader.next()
    except (ValueError, HttpProcessingError) as exc:
        raise ApiError(ApiErrorCode.INVALID_FIELD, f"malformed multipart body: {exc}") from None


async def _stage_multipart(request: web.Request, store: ResultStore) -> tuple[str, StagedBlob]:
    """Read a multipart upload: the ``job_id`` field and the ``file`` part, any order."""
    try:
        reader = await request.multipart()
    except (ValueError, aiohttp.ClientError, HttpProcessingError) as exc:  # no boundary...
        raise ApiError(ApiErrorCode.INVALID_FIELD, f"malformed multipart body: {exc}") from None
    job_id: str | None = None
    staged: StagedBlob | None = None
    try:
        while (part := await _next_part(reader)) is not None:
            if not isinstance(part, BodyPartReader):
                raise ApiError(ApiErrorCode.INVALID_FIELD, "nested multipart is not accepted")
            if part.name == "job_id":
                job_id = _check_job_id(await _read_field(part))
            elif part.name == "file":
                if staged is not None:
                    raise ApiError(ApiErrorCode.INVALID_FIELD, "more than one file part")
                staged = await store.stage(_part_chunks(part))
            else:
                await part.release()
        if staged is None:
            raise ApiError(ApiErrorCode.MISSING_FIELD, "the file part is required")
        return _check_job_id(job_id), staged
    except BaseException:
        if staged is not None:
            staged.discard()
        raise


async def _upload(request: web.Request) -> web.Response:
    """``POST /upload``: see the module docstring."""
    store = request.app[STORE_KEY]
    length = request.content_length
    if request.content_type.startswith("multipart/"):
        if length is not None and length > store.max_file_size + MULTIPART_OVERHEAD_BYTES:
            raise ApiError(
                ApiErrorCode.FILE_TOO_LARGE, f"the file is larger than {store.max_file_size} bytes"
            )
        job_id, staged = await _stage_multipart(request, store)
    else:
        job_id = _check_job_id(request.headers.get("X-Job-Id"))
        if not request.body_exists:
            raise ApiError(ApiErrorCode.MISSING_FIELD, "the request body (the file) is empty")
        if length is not None and length > store.max_file_size:
            raise ApiError(
                ApiErrorCode.FILE_TOO_LARGE, f"the file is larger than {store.max_file_size} bytes"
            )
        staged = await store.stage(request.content.iter_chunked(CHUNK_BYTES))
    try:
        record = await store.commit(job_id, staged)
    finally:
        staged.discard()  # no-op once moved into the blob store
    logger.info("stored job {!r}: {} bytes, sha256 {}", job_id, record.file_size, record.sha256)
    return web.json_response(
        {
            "job_id": record.job_id,
            "download_url": f"/download/{record.job_id}",
            "size": record.file_size,
            "sha256": record.sha256,
        },
        status=201,
    )


def _is_true(value: str | None) -> bool:
    return value is not None and value.strip().lower() in {"1", "true", "yes", "on"}


async def _download(request: web.Request) -> web.StreamResponse:
    """``GET /download/{job_id}[?keep=true]``: stream the file, then maybe delete it.

    ``downloaded_at`` is set and (with ``AUTO_DELETE`` and without ``keep=true``) the
    record deleted only after the last byte was handed to the connection; an
    interrupted download changes nothing. A request racing the end of a download may
    still be served.
    """
    store = request.app[STORE_KEY]
    job_id = request.match_info["job_id"]
    record = await store.get_live(job_id)
    try:
        file = await asyncio.to_thread(open, store.root / record.file_path, "rb")
    except FileNotFoundError:  # removed by a concurrent delete
        raise ApiError(ApiErrorCode.GONE, f"the file of job {job_id!r} was deleted") from None
    sent = 0
    try:
        response = web.StreamResponse(status=200)
        response.content_type = record.mime_type
        response.content_length = record.file_size
        response.headers["Content-Disposition"] = f'attachment; filename="{job_id}"'
        response.headers["X-Content-SHA256"] = record.sha256
        await response.prepare(request)
        while chunk := await asyncio.to_thread(file.read, CHUNK_BYTES):
            await response.write(chunk)
            sent += len(chunk)
        await response.write_eof()
    finally:
        await asyncio.to_thread(file.close)
    if sent == record.file_size:
        await asyncio.to_thread(store.db.mark_downloaded, job_id, now_timestamp())
        if store.auto_delete and not _is_true(request.query.get("keep")):
            with contextlib.suppress(ApiError):  # deleted meanwhile
                await store.delete(job_id)
                logger.info("job {!r} downloaded and deleted", job_id)
    return response


async def _delete(request: web.Request) -> web.Response:
    """``DELETE /delete/{job_id}``: 200 ``{"job_id", "deleted": true}``; 404 / 410."""
    job_id = request.match_info["job_id"]
    await request.app[STORE_KEY].delete(job_id)
    return web.json_response({"job_id": job_id, "deleted": True})


async def _list(request: web.Request) -> web.Response:
    """``GET /list``: 200 ``{"files": [record, ...]}``, deleted records included."""
    records = await asyncio.to_thread(request.app[STORE_KEY].db.all_records)
    return web.json_response({"files": [record.as_dict() for record in records]})
