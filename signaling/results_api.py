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

Layout under the storage folder: a :class:`~rtc_worker.storage.BlobStore` whose
``blobs/ab/<sha256>`` holds each distinct content once (uploads of identical bytes share
a blob; a blob is removed when no live record uses it) and whose ``partial/`` holds
uploads in progress. An upload streams into an anonymous partial file (never whole in
memory) while its size, SHA-256 and MIME type are computed, then is committed into the
blob store (fsync, atomic link). Leftover partials, the ``tmp/`` folder of earlier
versions and blobs no live record uses are removed at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from loguru import logger
from pydantic import BaseModel, ConfigDict, field_validator

from protocol.messages import is_valid_job_id
from rtc_worker.storage import BlobStore, PartialFile, layout
from signaling.api_common import (
    ApiError,
    ApiErrorCode,
    api_key_guard,
    error_response,
    now_timestamp,
)
from signaling.config import SignalingSettings
from signaling.db import FileRecord, StorageDB

__all__ = [
    "CHUNK_BYTES",
    "STORE_KEY",
    "ApiError",
    "ApiErrorCode",
    "DownloadQuery",
    "ResultsService",
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

BLOB_MODE = 0o600
"""Permission bits of the service's blobs (private to the server's user)."""


class ResultsService:
    """The blob store plus the SQLite records; one per app.

    Changes that touch both the blobs and the records (committing a blob and recording
    it, deleting a record and dropping its blob) run under one lock, so a blob is never
    removed between another upload's commit and its record.

    Attributes:
        root: the storage folder.
        blobs: its objects folder (``blobs/``).
        db: the records.
        max_file_size: largest upload, bytes.
        auto_delete: delete a record after its first complete download.

    Raises:
        ValueError: storage is not enabled in ``settings``.
    """

    def __init__(self, settings: SignalingSettings) -> None:
        if settings.storage_path is None or settings.database_file is None:
            raise ValueError("storage is not enabled in these settings")
        self.root = settings.storage_path
        self.blobs = self.root / layout.SERVICE_BLOBS_DIR
        self.db = StorageDB(settings.database_file)
        self.max_file_size = settings.storage_max_file_size
        self.auto_delete = settings.auto_delete
        self.partial_ttl_s = settings.upload_ttl_s
        self._store: BlobStore | None = None
        self._lock = asyncio.Lock()

    @property
    def store(self) -> BlobStore:
        """The blob store (opened, creating its folders, on first use; blocking)."""
        if self._store is None:
            self._store = BlobStore(
                self.root,
                objects_dir=layout.SERVICE_BLOBS_DIR,
                partial_dir=layout.PARTIAL_DIR,
                # partials outlive their upload's record (removed at upload_ttl_s) only
                # when something went wrong: the store's own expiry sweeps them later
                partial_ttl_s=2 * self.partial_ttl_s,
                object_mode=BLOB_MODE,
            )
        return self._store

    def open(self) -> None:
        """Create the folders, migrate the database, remove leftovers (blocking).

        Leftovers: the ``tmp/`` folder of earlier versions, anonymous partials of
        uploads cut by a crash, and blobs no live record uses.

        Raises:
            OSError: a folder cannot be created or cleaned.
            sqlite3.Error: the database cannot be opened or migrated.
        """
        store = self.store
        legacy_tmp = self.root / layout.SERVICE_LEGACY_TMP_DIR
        if legacy_tmp.is_dir():
            logger.info("removing the storage service's old temporary folder {}", legacy_tmp)
            shutil.rmtree(legacy_tmp)
        for key in store.partial_keys():
            if key.startswith("anon-"):
                store.remove_partial_if_idle(key)
        self.db.migrate()
        live = self.db.live_hashes()
        for sha256 in list(store.objects()):
            if sha256 not in live:
                logger.info("removing unreferenced blob {}", sha256)
                store.remove(sha256)

    @property
    def lock(self) -> asyncio.Lock:
        """The lock held by every change touching both blobs and records."""
        return self._lock

    async def receive(self, chunks: AsyncIterator[bytes]) -> PartialFile:
        """Stream ``chunks`` into a new anonymous partial, hashing them on the way.

        Returns:
            The open partial; :meth:`commit` it or discard it.

        Raises:
            ApiError: FILE_TOO_LARGE above :attr:`max_file_size` (the partial is removed).
            OSError: the disk failed (the partial is removed).
        """
        partial = await asyncio.to_thread(self.store.open_anonymous, "upload", None)
        try:
            async for chunk in chunks:
                if partial.offset + len(chunk) > self.max_file_size:
                    raise ApiError(
                        ApiErrorCode.FILE_TOO_LARGE,
                        f"the file is larger than {self.max_file_size} bytes",
                    )
                if partial.append(chunk):
                    await asyncio.to_thread(_write_next_batch, partial)
            await asyncio.to_thread(partial.flush)
        except BaseException:
            await asyncio.to_thread(partial.discard)
            raise
        return partial

    def drop_blob_if_unused(self, sha256: str) -> None:
        """Remove the blob of ``sha256`` when no live record uses it (blocking, locked)."""
        if self.db.references(sha256) == 0 and self.store.remove(sha256):
            logger.debug("removed blob {}", sha256)

    def _commit(self, job_id: str, partial: PartialFile) -> FileRecord:
        meta = partial.commit()
        record = FileRecord(
            job_id=job_id,
            file_path=self.store.object_rel(meta.sha256),
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

    async def commit(self, job_id: str, partial: PartialFile) -> FileRecord:
        """Store ``partial`` as the content of ``job_id``, replacing any earlier record."""
        async with self._lock:
            return await asyncio.to_thread(self._commit, job_id, partial)

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


def _write_next_batch(partial: PartialFile) -> None:
    batch = partial.take_batch()
    if batch is not None:
        partial.write_batch(batch)


STORE_KEY: web.AppKey[ResultsService] = web.AppKey("result_store", ResultsService)
"""The app's :class:`ResultsService` (present only when storage is enabled)."""


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
    store = ResultsService(settings)
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


async def _receive_multipart(
    request: web.Request, store: ResultsService
) -> tuple[str, PartialFile]:
    """Read a multipart upload: the ``job_id`` field and the ``file`` part, any order."""
    try:
        reader = await request.multipart()
    except (ValueError, aiohttp.ClientError, HttpProcessingError) as exc:  # no boundary...
        raise ApiError(ApiErrorCode.INVALID_FIELD, f"malformed multipart body: {exc}") from None
    job_id: str | None = None
    staged: PartialFile | None = None
    try:
        while (part := await _next_part(reader)) is not None:
            if not isinstance(part, BodyPartReader):
                raise ApiError(ApiErrorCode.INVALID_FIELD, "nested multipart is not accepted")
            if part.name == "job_id":
                job_id = _check_job_id(await _read_field(part))
            elif part.name == "file":
                if staged is not None:
                    raise ApiError(ApiErrorCode.INVALID_FIELD, "more than one file part")
                staged = await store.receive(_part_chunks(part))
            else:
                await part.release()
        if staged is None:
            raise ApiError(ApiErrorCode.MISSING_FIELD, "the file part is required")
        return _check_job_id(job_id), staged
    except BaseException:
        if staged is not None:
            await asyncio.to_thread(staged.discard)
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
        job_id, staged = await _receive_multipart(request, store)
    else:
        job_id = _check_job_id(request.headers.get("X-Job-Id"))
        if not request.body_exists:
            raise ApiError(ApiErrorCode.MISSING_FIELD, "the request body (the file) is empty")
        if length is not None and length > store.max_file_size:
            raise ApiError(
                ApiErrorCode.FILE_TOO_LARGE, f"the file is larger than {store.max_file_size} bytes"
            )
        staged = await store.receive(request.content.iter_chunked(CHUNK_BYTES))
    try:
        record = await store.commit(job_id, staged)
    finally:
        await asyncio.to_thread(staged.discard)  # no-op once committed
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


_QUERY_BOOLS = frozenset({"true", "false", "1", "0", "yes", "no", "on", "off"})


class DownloadQuery(BaseModel):
    """The query of ``GET /download/{job_id}``; other parameters are ignored.

    Attributes:
        keep: ``1``, ``true``, ``yes`` or ``on`` (any case, surrounding spaces ignored)
            keep the record after the download; any other value (or none) does not.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    keep: bool = False

    @field_validator("keep", mode="before")
    @classmethod
    def _documented_words(cls, value: object) -> object:
        """Pass the documented words on to pydantic's bool parsing; any other text is
        "not keep" (documented: it never makes the download fail)."""
        if isinstance(value, str):
            word = value.strip().lower()
            return word if word in _QUERY_BOOLS else False
        return value


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
    query = DownloadQuery.model_validate(dict(request.query))
    try:
        file = await asyncio.to_thread(store.store.open_object, record.sha256)
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
        if store.auto_delete and not query.keep:
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
