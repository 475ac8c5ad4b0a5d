"""Resumable chunked uploads on the result store, and the store's periodic cleanup.

Enabled with the result store (see :mod:`signaling.storage_api`), behind the same API
key, with the same JSON errors ``{"error": {"code", "message", "timestamp"}}``:

===================================  ===================================================
``POST /api/upload/init``            JSON ``{file_name, total_size, user_id, user_role,
                                     content_type}`` -> 201 ``{upload_id, chunk_size,
                                     total_chunks, status: "initiated"}``
``PUT /api/upload/chunk``            headers ``X-Upload-Id``, ``X-Chunk-Index``
                                     (0-based), body = the chunk -> ``{upload_id,
                                     chunk_index, status: "uploaded"}``
``POST /api/upload/complete``        JSON ``{upload_id}`` -> ``{upload_id, key, sha256,
                                     size, mime_type, status: "completed"}``
``GET /api/upload/{id}/status``      the upload's fields, ``status``,
                                     ``chunks_uploaded``, ``missing_chunks``
``POST /api/upload/cancel``          JSON ``{upload_id}`` -> ``{upload_id, status:
                                     "cancelled"}``
===================================  ===================================================

Every chunk but the last is exactly ``chunk_size`` bytes; the last one holds the rest.
A chunk of another size is refused (INVALID_FIELD). A chunk is streamed to a temporary
file beside its final place and renamed over it, so sending a chunk again replaces it
atomically. Completing checks that every chunk is there (INVALID_FIELD lists the
missing indexes), then concatenates them into a temporary file while hashing, and moves
it into the content-addressed ``blobs/`` store shared with ``/upload`` (identical
content is stored once). The upload gets the key
``{user_role}/{user_id}/{YYYYMMDD}/{category}/{file_name}`` (UTC date of completion;
category from the MIME type detected in the content, else from ``content_type``); a key
already held by another upload gets a ``-N`` suffix before the extension.

Errors: MISSING_FIELD / INVALID_FIELD (400), FILE_TOO_LARGE (413, ``total_size`` above
``storage_max_file_size``), UPLOAD_NOT_FOUND (404: unknown or cancelled upload),
UPLOAD_COMPLETED (409: chunk, complete or cancel on a completed upload).

State: the records live in SQLite (table ``uploads``), the chunks on disk under
``uploads/<upload_id>/<index>``; both survive a restart.

Cleanup (:func:`cleanup`): removes unfinished and cancelled uploads not changed for
``upload_ttl_s`` seconds with their chunks, chunk folders with no record, rows of
``files`` deleted more than ``upload_ttl_s`` ago, and blobs no live record references.
The server runs it every ``cleanup_interval_s`` seconds; ``rtc-signaling --storage-path
P --cleanup-once`` runs it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from aiohttp import web
from loguru import logger

from protocol.transfer import check_name
from rtc_worker.storage import MetadataBuilder, format_timestamp, fsync_directory
from signaling.config import SignalingSettings
from signaling.db import UploadRecord
from signaling.storage_api import (
    CHUNK_BYTES,
    STORE_KEY,
    ApiError,
    ApiErrorCode,
    ResultStore,
    StagedBlob,
    api_key_guard,
)

__all__ = [
    "UPLOADS_KEY",
    "CleanupReport",
    "UploadManager",
    "category_of",
    "cleanup",
    "setup_uploads",
]

_IDENT = re.compile(r"[A-Za-z0-9._-]{1,64}")
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,127}/[A-Za-z0-9!#$&^_.+-]{1,127}")
_MAX_JSON_BYTES = 64 * 1024
_UNFINISHED = ("initiated", "in_progress")
_DOCUMENT_TYPES = frozenset(
    {
        "application/pdf",
        "application/msword",
        "application/rtf",
        "application/json",
        "application/xml",
        "application/epub+zip",
        "application/vnd.ms-excel",
        "application/vnd.ms-powerpoint",
    }
)
_DOCUMENT_PREFIXES = (
    "text/",
    "application/vnd.openxmlformats-officedocument.",
    "application/vnd.oasis.opendocument.",
)
_GENERIC_TYPES = frozenset({"", "application/octet-stream", "inode/x-empty"})


def category_of(mime_type: str) -> str:
    """The key category of ``mime_type``: image, video, audio, document or other."""
    mime = mime_type.split(";", 1)[0].strip().lower()
    for family in ("image", "video", "audio"):
        if mime.startswith(family + "/"):
            return family
    if mime in _DOCUMENT_TYPES or mime.startswith(_DOCUMENT_PREFIXES):
        return "document"
    return "other"


def _stamp(moment: datetime) -> str:
    return format_timestamp(moment)


@dataclass(slots=True)
class CleanupReport:
    """What one :func:`cleanup` pass removed."""

    uploads: list[str] = field(default_factory=list)
    """Ids of expired unfinished or cancelled uploads (records and chunks removed)."""
    orphan_chunk_dirs: list[str] = field(default_factory=list)
    """Chunk folders under ``uploads/`` that had no record."""
    records: list[str] = field(default_factory=list)
    """Job ids of deleted ``files`` rows removed after the retention."""
    blobs: list[str] = field(default_factory=list)
    """SHA-256 of blobs nothing referenced any more."""

    def as_dict(self) -> dict[str, list[str]]:
        """The report as a JSON-ready dict."""
        return {
            "uploads": self.uploads,
            "orphan_chunk_dirs": self.orphan_chunk_dirs,
            "records": self.records,
            "blobs": self.blobs,
        }

    @property
    def total(self) -> int:
        """How many things were removed."""
        return len(self.uploads) + len(self.orphan_chunk_dirs) + len(self.records) + len(self.blobs)


def cleanup(store: ResultStore, ttl_s: float, now: datetime | None = None) -> CleanupReport:
    """Remove expired uploads, old deleted records and unreferenced blobs (blocking).

    Args:
        store: the opened result store.
        ttl_s: age in seconds (since the last change) after which an unfinished or
            cancelled upload, or a deleted record, is removed.
        now: the current time (UTC); now when omitted.

    Inside the server call it under ``store.lock`` (see :meth:`UploadManager.cleanup`).

    Raises:
        OSError: a file or folder cannot be removed.
        sqlite3.Error: the database failed.
    """
    moment = now or datetime.now(UTC)
    cutoff = _stamp(moment - timedelta(seconds=ttl_s))
    report = CleanupReport()
    chunks_root = store.root / "uploads"
    for record in store.db.stale_uploads(cutoff):
        if store.db.delete_upload(record.upload_id, cutoff):
            shutil.rmtree(chunks_root / record.upload_id, ignore_errors=True)
            report.uploads.append(record.upload_id)
    if chunks_root.is_dir():
        known = store.db.upload_ids()
        for folder in chunks_root.iterdir():
            if folder.is_dir() and folder.name not in known:
                shutil.rmtree(folder, ignore_errors=True)
                report.orphan_chunk_dirs.append(folder.name)
    for old in store.db.purge_deleted_files(cutoff):
        report.records.append(old.job_id)
    live = store.db.live_hashes()
    if store.blobs.is_dir():
        for shard in store.blobs.iterdir():
            if not shard.is_dir():
                continue
            for blob in shard.iterdir():
                if blob.name not in live:
                    with contextlib.suppress(FileNotFoundError):
                        blob.unlink()
                    report.blobs.append(blob.name)
            if report.blobs:
                fsync_directory(shard)
    for name, items in report.as_dict().items():
        for item in items:
            logger.info("cleanup removed {} {}", name.rstrip("s"), item)
    return report


def _write(file: IO[bytes], data: bytes) -> None:
    file.write(data)


def _write_and_hash(file: IO[bytes], builder: MetadataBuilder, data: bytes) -> None:
    builder.update(data)
    file.write(data)


def _sync_close(file: IO[bytes]) -> None:
    file.flush()
    os.fsync(file.fileno())
    file.close()


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


class UploadManager:
    """The resumable uploads of one app, over its :class:`ResultStore`."""

    def __init__(self, store: ResultStore, settings: SignalingSettings) -> None:
        self.store = store
        self.chunk_size = settings.upload_chunk_size
        self.ttl_s = settings.upload_ttl_s
        self.interval_s = settings.cleanup_interval_s
        self.root = store.root / "uploads"
        self._task: asyncio.Task[None] | None = None

    def open(self) -> None:
        """Create the chunk folder (blocking); the database is migrated by the store."""
        self.root.mkdir(parents=True, exist_ok=True)

    def chunk_dir(self, upload_id: str) -> Path:
        """The folder of the chunks of ``upload_id``."""
        return self.root / upload_id

    # ------------------------------------------------------------------ records

    async def record(self, upload_id: str) -> UploadRecord:
        """The upload ``upload_id``.

        Raises:
            ApiError: INVALID_FIELD for a malformed id, UPLOAD_NOT_FOUND when unknown.
        """
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise ApiError(ApiErrorCode.INVALID_FIELD, "upload_id must be 32 hex digits")
        record = await asyncio.to_thread(self.store.db.get_upload, upload_id)
        if record is None:
            raise ApiError(ApiErrorCode.UPLOAD_NOT_FOUND, f"no upload {upload_id!r}")
        return record

    @staticmethod
    def require_open(record: UploadRecord) -> None:
        if record.status == "completed":
            raise ApiError(
                ApiErrorCode.UPLOAD_COMPLETED, f"upload {record.upload_id!r} is already completed"
            )
        if record.status == "cancelled":
            raise ApiError(
                ApiErrorCode.UPLOAD_NOT_FOUND, f"upload {record.upload_id!r} was cancelled"
            )

    def present_chunks(self, record: UploadRecord) -> set[int]:
        """Indexes of the chunks on disk with their exact length (blocking)."""
        folder = self.chunk_dir(record.upload_id)
        present: set[int] = set()
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(folder):
                if not entry.name.isdigit():
                    continue
                index = int(entry.name)
                if index < record.total_chunks and entry.stat().st_size == record.chunk_length(
                    index
                ):
                    present.add(index)
        return present

    def status_of(self, record: UploadRecord) -> dict[str, Any]:
        """The JSON status of ``record`` (blocking: lists its chunks)."""
        if record.status == "completed":
            present = set(range(record.total_chunks))
        else:
            present = self.present_chunks(record)
        return {
            "upload_id": record.upload_id,
            "file_name": record.file_name,
            "total_size": record.total_size,
            "user_id": record.user_id,
            "user_role": record.user_role,
            "content_type": record.content_type,
            "chunk_size": record.chunk_size,
            "total_chunks": record.total_chunks,
            "status": record.status,
            "chunks_uploaded": len(present),
            "missing_chunks": sorted(set(range(record.total_chunks)) - present),
            "created_at": record.created_at,
            "updated_at": record.updated_at,
            "key": record.key,
            "sha256": record.sha256,
            "mime_type": record.mime_type,
        }

    # ------------------------------------------------------------------ operations

    async def init(self, body: dict[str, Any]) -> UploadRecord:
        """Validate an init request and create the upload with its chunk folder."""
        file_name = _text_field(body, "file_name")
        reason = check_name(file_name)
        if reason is not None:
            raise ApiError(ApiErrorCode.INVALID_FIELD, f"file_name is not acceptable: {reason}")
        user_id = _ident_field(body, "user_id")
        user_role = _ident_field(body, "user_role")
        total_size = body.get("total_size")
        if total_size is None:
            raise ApiError(ApiErrorCode.MISSING_FIELD, "total_size is required")
        if not isinstance(total_size, int) or isinstance(total_size, bool) or total_size < 0:
            raise ApiError(ApiErrorCode.INVALID_FIELD, "total_size must be an integer >= 0")
        if total_size > self.store.max_file_size:
            raise ApiError(
                ApiErrorCode.FILE_TOO_LARGE,
                f"the file is larger than {self.store.max_file_size} bytes",
            )
        content_type = body.get("content_type")
        if content_type is None or content_type == "":
            content_type = "application/octet-stream"
        if not isinstance(content_type, str) or not _CONTENT_TYPE.fullmatch(
            content_type.split(";", 1)[0].strip()
        ):
            raise ApiError(ApiErrorCode.INVALID_FIELD, "content_type must be a MIME type")
        now = _stamp(datetime.now(UTC))
        record = UploadRecord(
            upload_id=uuid.uuid4().hex,
            file_name=file_name,
            total_size=total_size,
            user_id=user_id,
            user_role=user_role,
            content_type=content_type,
            chunk_size=self.chunk_size,
            status="initiated",
            created_at=now,
            updated_at=now,
        )
        await asyncio.to_thread(self.chunk_dir(record.upload_id).mkdir, parents=True)
        await asyncio.to_thread(self.store.db.create_upload, record)
        logger.info(
            "upload {} initiated: {!r}, {} bytes in {} chunks",
            record.upload_id,
            file_name,
            total_size,
            record.total_chunks,
        )
        return record

    async def put_chunk(self, upload_id: str, index: int, body: AsyncIterator[bytes]) -> None:
        """Stream one chunk to disk and rename it into place.

        Raises:
            ApiError: INVALID_FIELD for an index out of range or a chunk of the wrong
                size; UPLOAD_NOT_FOUND / UPLOAD_COMPLETED as for :meth:`record`.
        """
        record = await self.record(upload_id)
        self.require_open(record)
        if not 0 <= index < record.total_chunks:
            raise ApiError(
                ApiErrorCode.INVALID_FIELD,
                f"chunk index must be in 0..{record.total_chunks - 1}",
            )
        expected = record.chunk_length(index)
        folder = self.chunk_dir(upload_id)
        try:
            fd, name = await asyncio.to_thread(
                tempfile.mkstemp, dir=folder, prefix=f".{index}.", suffix=".part"
            )
        except FileNotFoundError:
            raise ApiError(ApiErrorCode.UPLOAD_NOT_FOUND, f"upload {upload_id!r} is gone") from None
        temp = Path(name)
        file = os.fdopen(fd, "wb")
        size = 0
        try:
            async for data in body:
                size += len(data)
                if size > expected:
                    raise ApiError(
                        ApiErrorCode.INVALID_FIELD,
                        f"chunk {index} must be {expected} bytes; more were sent",
                    )
                await asyncio.to_thread(_write, file, data)
            if size != expected:
                raise ApiError(
                    ApiErrorCode.INVALID_FIELD,
                    f"chunk {index} must be {expected} bytes, not {size}",
                )
            await asyncio.to_thread(_sync_close, file)
            await asyncio.to_thread(os.replace, temp, folder / str(index))
        except BaseException:
            file.close()
            _remove_quietly(temp)
            raise
        when = _stamp(datetime.now(UTC))
        before = await asyncio.to_thread(
            self.store.db.set_upload_status, upload_id, "in_progress", when, _UNFINISHED
        )
        if before is None or before not in _UNFINISHED:
            # Completed or cancelled while the chunk streamed: the chunk is not wanted.
            _remove_quietly(folder / str(index))
            self.require_open(await self.record(upload_id))

    async def complete(self, upload_id: str) -> UploadRecord:
        """Assemble the chunks into the blob store and give the upload its key.

        Raises:
            ApiError: INVALID_FIELD listing missing chunks; UPLOAD_NOT_FOUND /
                UPLOAD_COMPLETED as for :meth:`record`.
        """
        record = await self.record(upload_id)
        self.require_open(record)
        present = await asyncio.to_thread(self.present_chunks, record)
        missing = sorted(set(range(record.total_chunks)) - present)
        if missing:
            raise ApiError(
                ApiErrorCode.INVALID_FIELD,
                f"missing chunks: {', '.join(str(index) for index in missing)}",
            )
        staged = await self._assemble(record)
        try:
            meta = staged.metadata
            mime = meta.mime_type
            if mime.split(";", 1)[0].strip().lower() in _GENERIC_TYPES:
                mime = record.content_type
            async with self.store.lock:
                done = await asyncio.to_thread(self._commit, record, staged, mime)
        finally:
            staged.discard()
        await asyncio.to_thread(shutil.rmtree, self.chunk_dir(upload_id), True)
        logger.info("upload {} completed as {!r} (sha256 {})", upload_id, done.key, done.sha256)
        return done

    async def _assemble(self, record: UploadRecord) -> StagedBlob:
        fd, name = await asyncio.to_thread(tempfile.mkstemp, dir=self.store.tmp, prefix="chunks-")
        temp = Path(name)
        out = os.fdopen(fd, "wb")
        builder = MetadataBuilder()
        folder = self.chunk_dir(record.upload_id)
        try:
            for index in range(record.total_chunks):
                chunk = await asyncio.to_thread(open, folder / str(index), "rb")
                try:
                    while data := await asyncio.to_thread(chunk.read, CHUNK_BYTES):
                        await asyncio.to_thread(_write_and_hash, out, builder, data)
                finally:
                    chunk.close()
            await asyncio.to_thread(_sync_close, out)
            metadata = await asyncio.to_thread(builder.finish)
        except FileNotFoundError:
            out.close()
            _remove_quietly(temp)
            raise ApiError(
                ApiErrorCode.INVALID_FIELD, "a chunk disappeared while completing; resend it"
            ) from None
        except BaseException:
            out.close()
            _remove_quietly(temp)
            raise
        if metadata.size != record.total_size:
            _remove_quietly(temp)
            raise ApiError(
                ApiErrorCode.INVALID_FIELD,
                f"the chunks hold {metadata.size} bytes, not {record.total_size}",
            )
        return StagedBlob(temp, metadata)

    def _commit(self, record: UploadRecord, staged: StagedBlob, mime: str) -> UploadRecord:
        """Place the blob and complete the record (blocking, under the store lock)."""
        current = self.store.db.get_upload(record.upload_id)
        if current is None:
            raise ApiError(ApiErrorCode.UPLOAD_NOT_FOUND, f"no upload {record.upload_id!r}")
        self.require_open(current)
        now = datetime.now(UTC)
        base = "/".join(
            (record.user_role, record.user_id, now.strftime("%Y%m%d"), category_of(mime))
        )
        relative = self.store.place_blob(staged)
        sha256 = staged.metadata.sha256
        stem, dot, ext = record.file_name.rpartition(".")
        if not stem:  # no extension, or a leading dot only (".env")
            stem, dot, ext = record.file_name, "", ""
        candidate = f"{base}/{record.file_name}"
        counter = 0
        while True:
            if not self.store.db.key_taken(candidate):
                try:
                    changed = self.store.db.complete_upload(
                        record.upload_id, candidate, sha256, relative, mime, _stamp(now)
                    )
                except sqlite3.IntegrityError:  # taken by a writer outside this process
                    changed = None
                if changed is not None:
                    break
            counter += 1
            candidate = f"{base}/{stem}-{counter}{dot}{ext}"
        if not changed:
            self.store.drop_blob_if_unused(sha256)
            self.require_open(self.store.db.get_upload(record.upload_id) or current)
        done = self.store.db.get_upload(record.upload_id)
        assert done is not None
        return done

    async def cancel(self, upload_id: str) -> UploadRecord:
        """Cancel an unfinished upload and remove its chunks (cancelling twice is fine).

        Raises:
            ApiError: UPLOAD_NOT_FOUND when unknown, UPLOAD_COMPLETED when completed.
        """
        record = await self.record(upload_id)
        when = _stamp(datetime.now(UTC))
        before = await asyncio.to_thread(
            self.store.db.set_upload_status, upload_id, "cancelled", when, _UNFINISHED
        )
        if before == "completed":
            raise ApiError(
                ApiErrorCode.UPLOAD_COMPLETED, f"upload {record.upload_id!r} is already completed"
            )
        await asyncio.to_thread(shutil.rmtree, self.chunk_dir(upload_id), True)
        logger.info("upload {} cancelled", upload_id)
        return await self.record(upload_id)

    # ------------------------------------------------------------------ cleanup

    async def cleanup(self, now: datetime | None = None) -> CleanupReport:
        """Run :func:`cleanup` off the event loop, under the store lock."""
        async with self.store.lock:
            return await asyncio.to_thread(cleanup, self.store, self.ttl_s, now)

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                report = await self.cleanup()
            except (OSError, sqlite3.Error) as exc:
                logger.error("cleanup failed: {}", exc)
            else:
                if report.total:
                    logger.info("cleanup removed {} item(s)", report.total)

    async def start(self, app: web.Application) -> None:
        """``on_startup``: start the periodic cleanup."""
        self._task = asyncio.create_task(self._periodic(), name="storage-cleanup")

    async def stop(self, app: web.Application) -> None:
        """``on_cleanup``: stop the periodic cleanup."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


UPLOADS_KEY: web.AppKey[UploadManager] = web.AppKey("uploads", UploadManager)
"""The app's :class:`UploadManager` (present only when storage is enabled)."""


def setup_uploads(app: web.Application, settings: SignalingSettings) -> bool:
    """Add the resumable upload routes and the periodic cleanup to ``app``.

    Call after :func:`signaling.storage_api.setup_storage`; does nothing when storage
    is disabled. Blocking (creates the chunk folder).

    Returns:
        Whether the routes were added.
    """
    if STORE_KEY not in app:
        return False
    key = settings.storage_api_key_value
    if key is None:  # the settings refuse this; kept as a guard
        raise ValueError("storage requires an API key")
    manager = UploadManager(app[STORE_KEY], settings)
    manager.open()
    app[UPLOADS_KEY] = manager
    guard = api_key_guard(key.encode("utf-8"))
    app.router.add_post("/api/upload/init", guard(_init))
    app.router.add_put("/api/upload/chunk", guard(_chunk))
    app.router.add_post("/api/upload/complete", guard(_complete))
    app.router.add_get("/api/upload/{upload_id}/status", guard(_status))
    app.router.add_post("/api/upload/cancel", guard(_cancel))
    app.on_startup.append(manager.start)
    app.on_cleanup.append(manager.stop)
    return True


def _text_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None or value == "":
        raise ApiError(ApiErrorCode.MISSING_FIELD, f"{name} is required")
    if not isinstance(value, str):
        raise ApiError(ApiErrorCode.INVALID_FIELD, f"{name} must be a string")
    return value


def _ident_field(body: dict[str, Any], name: str) -> str:
    value = _text_field(body, name)
    if not _IDENT.fullmatch(value) or ".." in value or value == ".":
        raise ApiError(
            ApiErrorCode.INVALID_FIELD, f"{name} must match [A-Za-z0-9._-]{{1,64}}, without .."
        )
    return value


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > _MAX_JSON_BYTES:
        raise ApiError(ApiErrorCode.INVALID_FIELD, "the JSON body is too large")
    raw = await request.content.read(_MAX_JSON_BYTES + 1)
    if len(raw) > _MAX_JSON_BYTES:
        raise ApiError(ApiErrorCode.INVALID_FIELD, "the JSON body is too large")
    if not raw.strip():
        raise ApiError(ApiErrorCode.MISSING_FIELD, "a JSON object body is required")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(ApiErrorCode.INVALID_FIELD, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(ApiErrorCode.INVALID_FIELD, "the body must be a JSON object")
    return body


async def _init(request: web.Request) -> web.Response:
    """``POST /api/upload/init``: see the module docstring."""
    manager = request.app[UPLOADS_KEY]
    record = await manager.init(await _json_body(request))
    return web.json_response(
        {
            "upload_id": record.upload_id,
            "chunk_size": record.chunk_size,
            "total_chunks": record.total_chunks,
            "status": record.status,
        },
        status=201,
    )


async def _chunk(request: web.Request) -> web.Response:
    """``PUT /api/upload/chunk``: see the module docstring."""
    manager = request.app[UPLOADS_KEY]
    upload_id = request.headers.get("X-Upload-Id", "")
    if not upload_id:
        raise ApiError(ApiErrorCode.MISSING_FIELD, "the X-Upload-Id header is required")
    raw_index = request.headers.get("X-Chunk-Index", "")
    if not raw_index:
        raise ApiError(ApiErrorCode.MISSING_FIELD, "the X-Chunk-Index header is required")
    if not (raw_index.isascii() and raw_index.isdigit()) or len(raw_index) > 12:
        raise ApiError(ApiErrorCode.INVALID_FIELD, "X-Chunk-Index must be an integer >= 0")
    index = int(raw_index)
    record = await manager.record(upload_id)
    if (
        request.content_length is not None
        and 0 <= index < record.total_chunks
        and request.content_length != record.chunk_length(index)
    ):
        manager.require_open(record)
        raise ApiError(
            ApiErrorCode.INVALID_FIELD,
            f"chunk {index} must be {record.chunk_length(index)} bytes, "
            f"not {request.content_length}",
        )
    await manager.put_chunk(upload_id, index, request.content.iter_chunked(CHUNK_BYTES))
    return web.json_response({"upload_id": upload_id, "chunk_index": index, "status": "uploaded"})


async def _upload_id_of(request: web.Request) -> str:
    body = await _json_body(request)
    return _text_field(body, "upload_id")


async def _complete(request: web.Request) -> web.Response:
    """``POST /api/upload/complete``: see the module docstring."""
    manager = request.app[UPLOADS_KEY]
    record = await manager.complete(await _upload_id_of(request))
    return web.json_response(
        {
            "upload_id": record.upload_id,
            "key": record.key,
            "sha256": record.sha256,
            "size": record.total_size,
            "mime_type": record.mime_type,
            "status": record.status,
        }
    )


async def _status(request: web.Request) -> web.Response:
    """``GET /api/upload/{upload_id}/status``: see the module docstring."""
    manager = request.app[UPLOADS_KEY]
    record = await manager.record(request.match_info["upload_id"])
    return web.json_response(await asyncio.to_thread(manager.status_of, record))


async def _cancel(request: web.Request) -> web.Response:
    """``POST /api/upload/cancel``: see the module docstring."""
    manager = request.app[UPLOADS_KEY]
    record = await manager.cancel(await _upload_id_of(request))
    return web.json_response({"upload_id": record.upload_id, "status": record.status})
