"""Resumable uploads over the result store: records in its database (SQLite or
PostgreSQL), bytes in one partial file per upload (see :mod:`signaling.uploads_api` for the routes).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from loguru import logger

from rtc_worker.storage import FileMetadata, HashMismatchError, format_timestamp, parse_timestamp
from rtc_worker.storage.record import covered
from signaling.api_common import ApiError, ApiErrorCode
from signaling.auth import Caller, Role
from signaling.blobs import BlobNotFoundError, BlobUpload
from signaling.blobs_local import FolderBlobs
from signaling.config import SignalingSettings
from signaling.db import QuotaRefusal, UploadRecord
from signaling.db_engine import DATABASE_ERRORS, STORAGE_ERRORS, is_unique_violation
from signaling.db_schema import UNFINISHED
from signaling.legacy_chunks import migrate_chunk_folders
from signaling.results_store import ResultsService
from signaling.store_cleanup import CleanupReport, cleanup
from signaling.upload_fields import GENERIC_TYPES, category_of, ident_field, init_record, text_field
from signaling.upload_offsets import OffsetWrites

__all__ = ["UploadManager", "category_of", "ident_field", "text_field"]

_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
Result = tuple[str, str] | None


def _stamp(moment: datetime) -> str:
    return format_timestamp(moment)


def _may_use(caller: Caller | None, record: UploadRecord) -> bool:
    """Whether ``caller`` may see and change ``record`` (no caller: the server itself)."""
    return caller is None or caller.role is Role.ADMIN or record.owner == caller.principal


class UploadManager(OffsetWrites):
    """The resumable uploads of one app, over its :class:`ResultsService`.

    Each upload is one partial upload of the blob backend (a partial file, or an S3
    multipart upload), keyed by its ``upload_id`` and written by ranges. It is open
    while chunk requests use it (concurrent chunks of one upload share it) and closed
    when the last one ends.

    Each upload belongs to the principal of the key that created it: any other key
    (but an admin's) is told UPLOAD_NOT_FOUND. A principal's open uploads (unfinished,
    changed within ``upload_ttl_s``) are bounded in number and announced bytes
    (QUOTA_EXCEEDED), and with the folder backend every upload leaves the disk reserve
    free (DISK_FULL).
    """

    def __init__(self, store: ResultsService, settings: SignalingSettings) -> None:
        self.store = store
        self.chunk_size = settings.upload_chunk_size
        self.ttl_s = settings.upload_ttl_s
        self.relay_ttl_s = settings.relay_ttl_s
        self.interval_s = settings.cleanup_interval_s
        self.quota_bytes = settings.upload_quota_bytes
        self.quota_count = settings.upload_quota_count
        self._task: asyncio.Task[None] | None = None
        self._open: dict[str, tuple[BlobUpload, int]] = {}
        self._open_lock = asyncio.Lock()

    async def open(self) -> None:
        """Move chunk folders of earlier versions into their uploads' partials (after
        the store is open: the database is migrated by the store; folder backend only:
        with another backend they stay until their upload expires)."""
        backend = self.store.backend
        if isinstance(backend, FolderBlobs):
            records = await self.store.db.all_uploads()
            await asyncio.to_thread(migrate_chunk_folders, self.store.root, backend.store, records)

    # ------------------------------------------------------------------ records

    async def record(self, upload_id: str, caller: Caller | None = None) -> UploadRecord:
        """The upload ``upload_id``, when ``caller`` (if given) may see it.

        Raises:
            ApiError: INVALID_FIELD for a malformed id, UPLOAD_NOT_FOUND when unknown or
                another principal's (an admin sees every upload).
        """
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise ApiError(ApiErrorCode.INVALID_FIELD, "upload_id must be 32 hex digits")
        record = await self.store.db.get_upload(upload_id)
        if record is None or not _may_use(caller, record):
            raise ApiError(ApiErrorCode.UPLOAD_NOT_FOUND, f"no upload {upload_id!r}")
        if self.expired(record):
            record = await self._expire(record)
        return record

    def expired(self, record: UploadRecord) -> bool:
        """Whether ``record`` is unfinished and unchanged for ``upload_ttl_s``: it no
        longer counts against the quota, so no request may use it again."""
        return record.status in UNFINISHED and record.updated_at < self._cutoff()

    async def _expire(self, record: UploadRecord) -> UploadRecord:
        """Cancel the expired ``record`` (its partial removed); the record after."""
        upload_id = record.upload_id
        when = _stamp(datetime.now(UTC))
        before = await self.store.freeing(
            lambda: self.store.db.set_upload_status(upload_id, "cancelled", when, UNFINISHED)
        )
        if before in UNFINISHED:
            await self._release(upload_id, discard=True)
            logger.info("upload {} expired", upload_id)
        return await self.store.db.get_upload(upload_id) or dataclasses.replace(
            record, status="cancelled", updated_at=when
        )

    def upload_lock(self, upload_id: str) -> contextlib.AbstractAsyncContextManager[bool]:
        """Try to hold ``upload_id`` against every instance sharing the database for the
        block (``async with ... as held``; ``held`` is ``False`` when another holds it):
        :meth:`~signaling.db_engine.Database.upload_lock`."""
        return self.store.db.upload_lock(upload_id)

    def _cutoff(self) -> str:
        """Unfinished uploads changed before this time have expired."""
        return _stamp(datetime.now(UTC) - timedelta(seconds=self.ttl_s))

    def require_open(self, record: UploadRecord) -> None:
        """Raise ApiError UPLOAD_COMPLETED / UPLOAD_NOT_FOUND unless it is unfinished and
        not expired (:meth:`record` cancels an expired upload as it reads it)."""
        if record.status == "completed":
            raise ApiError(
                ApiErrorCode.UPLOAD_COMPLETED, f"upload {record.upload_id!r} is already completed"
            )
        if record.status == "cancelled":
            raise ApiError(
                ApiErrorCode.UPLOAD_NOT_FOUND, f"upload {record.upload_id!r} was cancelled"
            )
        if self.expired(record):
            raise ApiError(ApiErrorCode.UPLOAD_NOT_FOUND, f"upload {record.upload_id!r} expired")

    async def present_chunks(self, record: UploadRecord) -> set[int]:
        """Indexes of the chunks held, from the partial's durable record."""
        ranges = await self.store.backend.upload_ranges(record.upload_id)
        return {
            index
            for index in range(record.total_chunks)
            if covered(
                ranges,
                index * record.chunk_size,
                index * record.chunk_size + record.chunk_length(index),
            )
        }

    async def status_of(self, record: UploadRecord) -> dict[str, Any]:
        """The JSON status of ``record`` (reads its partial's record)."""
        if record.status == "completed":
            present = set(range(record.total_chunks))
        else:
            present = await self.present_chunks(record)
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
            "owner": record.owner,
            "expires_at": self._expires_at(record),
        }

    def expires(self, record: UploadRecord) -> datetime | None:
        """When the unfinished ``record`` expires unless changed again (its last change
        plus the upload lifetime), else ``None``."""
        if record.status not in UNFINISHED:
            return None
        return parse_timestamp(record.updated_at) + timedelta(seconds=self.ttl_s)

    def _expires_at(self, record: UploadRecord) -> str | None:
        """:meth:`expires` as ISO 8601 UTC."""
        moment = self.expires(record)
        return None if moment is None else _stamp(moment)

    # ------------------------------------------------------------------ the partial

    async def _acquire(self, record: UploadRecord) -> BlobUpload:
        """Open (or share) the upload's partial for one request."""
        async with self._open_lock:
            partial, users = self._open.get(record.upload_id, (None, 0))
            if partial is None:
                partial = await self.store.backend.open_upload(
                    record.upload_id,
                    record.total_size,
                    record.file_name,
                    align=record.chunk_size,
                )
            self._open[record.upload_id] = (partial, users + 1)
            return partial

    async def _release(self, upload_id: str, *, discard: bool = False) -> None:
        """End one request's use of the partial; the last one closes (or discards) it."""
        async with self._open_lock:
            partial, users = self._open.pop(upload_id, (None, 0))
            if partial is not None and users > 1 and not discard:
                self._open[upload_id] = (partial, users - 1)
                return
            if partial is not None:
                await (partial.discard() if discard else partial.close())
            elif discard:
                await self.store.backend.remove_upload(upload_id)

    # ------------------------------------------------------------------ operations

    async def init(
        self, body: dict[str, Any], caller: Caller, *, result: Result = None, relay: bool = False
    ) -> UploadRecord:
        """Validate an init request and create the upload, owned by ``caller``;
        ``result`` is ``(owner, job_id)`` of the result it is also stored as (checked by
        the caller, see :meth:`complete_result`), or ``None``; ``relay``: a relay object.

        Raises:
            ApiError: MISSING_FIELD, INVALID_FIELD, FILE_TOO_LARGE (see
                :func:`~signaling.upload_fields.init_record`); QUOTA_EXCEEDED when the
                caller's open uploads and live relay objects are at the quota (count or
                bytes); DISK_FULL when the upload, with
                what the open uploads still announce, would eat into the disk reserve.
        """
        record = init_record(
            body,
            owner=caller.principal,
            max_size=self.store.max_file_size,
            chunk_size=self.chunk_size,
            result=result,
            relay=relay,
        )
        cutoff = self._cutoff()
        await self._require_room_for(record.total_size, cutoff)
        relay_cutoff = _stamp(datetime.now(UTC) - timedelta(seconds=self.relay_ttl_s))
        refusal = await self.store.db.create_upload_within(
            record, cutoff, self.quota_count, self.quota_bytes, relay_cutoff
        )
        if refusal is QuotaRefusal.COUNT:
            raise ApiError(
                ApiErrorCode.QUOTA_EXCEEDED,
                f"{self.quota_count} open uploads and relay objects is the most allowed; "
                "complete, cancel or delete one",
            )
        if refusal is QuotaRefusal.BYTES:
            raise ApiError(
                ApiErrorCode.QUOTA_EXCEEDED,
                f"open uploads and relay objects may hold at most {self.quota_bytes} bytes",
            )
        logger.info(
            "upload {} of {} initiated: {!r}, {} bytes in {} chunks",
            record.upload_id,
            record.owner,
            record.file_name,
            record.total_size,
            record.total_chunks,
        )
        return record

    async def _require_room_for(self, total_size: int, cutoff: str) -> None:
        """DISK_FULL unless ``total_size`` plus the bytes open uploads still announce
        leave the disk reserve free (folder backend only)."""
        if not self.store.backend.local_disk:
            return
        announced = await self.store.db.open_upload_bytes(cutoff)
        held = await self.store.backend.partial_bytes()
        await asyncio.to_thread(self.store.require_room, total_size + max(0, announced - held))

    async def put_chunk(
        self, upload_id: str, index: int, body: AsyncIterator[bytes], caller: Caller
    ) -> None:
        """Stream one chunk into the upload's partial at its offset, then record it.

        Raises:
            ApiError: INVALID_FIELD for an index out of range or a chunk of the wrong
                size (nothing is recorded); UPLOAD_NOT_FOUND / UPLOAD_COMPLETED as for
                :meth:`record`; DISK_FULL when a piece would eat into the disk reserve
                (the chunk is not recorded; send it again later).
        """
        record = await self.record(upload_id, caller)
        self.require_open(record)
        if not 0 <= index < record.total_chunks:
            raise ApiError(
                ApiErrorCode.INVALID_FIELD,
                f"chunk index must be in 0..{record.total_chunks - 1}",
            )
        expected = record.chunk_length(index)
        start = index * record.chunk_size
        partial = await self._acquire(record)
        try:
            await partial.write_range(start, _exactly(body, expected, index))
        except (ValueError, BlobNotFoundError) as exc:  # a cancel discarded the partial?
            self.require_open(await self.record(upload_id))
            raise ApiError(
                ApiErrorCode.INVALID_FIELD, f"chunk {index} was not stored ({exc}); send it again"
            ) from exc
        finally:
            await self._release(upload_id)
        when = _stamp(datetime.now(UTC))
        before = await self.store.db.set_upload_status(upload_id, "in_progress", when, UNFINISHED)
        if before is None or before not in UNFINISHED:
            # Completed or cancelled while the chunk streamed: the chunk is not wanted.
            self.require_open(await self.record(upload_id))

    async def complete(
        self, upload_id: str, caller: Caller, sha256: str | None = None
    ) -> UploadRecord:
        """Verify the upload's partial and commit it into the blob store with its key.

        Args:
            upload_id: the upload.
            caller: who asks (its owner or an admin).
            sha256: the digest the content must have (lowercase hex), or ``None``.

        Raises:
            ApiError: INVALID_FIELD listing missing chunks; SHA256_MISMATCH when the
                content has another digest than ``sha256`` (nothing is published, the
                chunks are dropped: send them again); UPLOAD_NOT_FOUND /
                UPLOAD_COMPLETED as for :meth:`record`.
        """
        record = await self.record(upload_id, caller)
        self.require_open(record)
        present = await self.present_chunks(record)
        missing = sorted(set(range(record.total_chunks)) - present)
        if missing:
            raise ApiError(
                ApiErrorCode.INVALID_FIELD,
                f"missing chunks: {', '.join(str(index) for index in missing)}",
            )
        partial = await self._acquire(record)
        committed = False
        try:
            verified = await partial.verify(sha256)  # the long parts, unlocked
            with self.store.pinning(verified.sha256):
                meta = await partial.commit()  # the copy into the store, unlocked
                committed = True
                mime = meta.mime_type
                if mime.split(";", 1)[0].strip().lower() in GENERIC_TYPES:
                    mime = record.content_type
                async with self.store.lock:  # only the records and the blob's use
                    done = await self._commit(record, meta, mime)
        except HashMismatchError as exc:
            if sha256 is None:  # the file changed under us
                raise ApiError(
                    ApiErrorCode.INVALID_FIELD, f"the chunks could not be verified: {exc}"
                ) from None
            raise ApiError(
                ApiErrorCode.SHA256_MISMATCH,
                f"the content's sha256 is {exc.actual}, not {sha256}; send the chunks again",
            ) from None
        except ValueError as exc:
            raise ApiError(
                ApiErrorCode.INVALID_FIELD, f"the chunks could not be verified: {exc}; resend them"
            ) from None
        finally:
            await self._release(upload_id, discard=committed)
        logger.info("upload {} completed as {!r} (sha256 {})", upload_id, done.key, done.sha256)
        return done

    async def _commit(self, record: UploadRecord, meta: FileMetadata, mime: str) -> UploadRecord:
        """Complete the record of the committed blob ``meta`` (under the store lock;
        a blob left unused, when the upload was cancelled meanwhile, is dropped)."""
        current = await self.store.db.get_upload(record.upload_id)
        try:
            if current is None:
                raise ApiError(ApiErrorCode.UPLOAD_NOT_FOUND, f"no upload {record.upload_id!r}")
            self.require_open(current)
        except ApiError:  # cancelled or expired while the blob was copied
            await self.store.drop_blob_if_unused(meta.sha256, mine=True)
            raise
        await self.store.require_blob(meta.sha256)
        now = datetime.now(UTC)
        base = "/".join(
            (record.user_role, record.user_id, now.strftime("%Y%m%d"), category_of(mime))
        )
        relative = self.store.backend.location(meta.sha256)
        sha256 = meta.sha256
        stem, dot, ext = record.file_name.rpartition(".")
        if not stem:  # no extension, or a leading dot only (".env")
            stem, dot, ext = record.file_name, "", ""
        candidate = f"{base}/{record.file_name}"
        counter = 0
        while True:
            if not await self.store.db.key_taken(candidate):
                try:
                    changed = await self.store.db.complete_upload(
                        record.upload_id, candidate, sha256, relative, mime, _stamp(now)
                    )
                except DATABASE_ERRORS as exc:  # taken by another instance meanwhile
                    if not is_unique_violation(exc):
                        raise
                    changed = None
                if changed is not None:
                    break
            counter += 1
            candidate = f"{base}/{stem}-{counter}{dot}{ext}"
        if not changed:
            await self.store.drop_blob_if_unused(sha256, mine=True)
            self.require_open(await self.store.db.get_upload(record.upload_id) or current)
        done = await self.store.db.get_upload(record.upload_id)
        assert done is not None
        return done

    async def cancel(self, upload_id: str, caller: Caller) -> UploadRecord:
        """Cancel an unfinished upload and remove its chunks (cancelling twice is fine).

        Raises:
            ApiError: UPLOAD_NOT_FOUND when unknown (or another principal's),
                UPLOAD_COMPLETED when completed.
        """
        record = await self.record(upload_id, caller)
        when = _stamp(datetime.now(UTC))
        before = await self.store.freeing(
            lambda: self.store.db.set_upload_status(upload_id, "cancelled", when, UNFINISHED)
        )
        if before == "completed":
            raise ApiError(
                ApiErrorCode.UPLOAD_COMPLETED, f"upload {record.upload_id!r} is already completed"
            )
        await self._release(upload_id, discard=True)
        logger.info("upload {} cancelled", upload_id)
        return await self.record(upload_id)

    # ------------------------------------------------------------------ cleanup

    async def cleanup(self, now: datetime | None = None) -> CleanupReport:
        """Run :func:`cleanup`, holding the store lock only for its record changes."""
        lock = self.store.lock
        return await cleanup(self.store, self.ttl_s, now, lock=lock, relay_ttl_s=self.relay_ttl_s)

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                report = await self.cleanup()
            except STORAGE_ERRORS as exc:
                logger.error("cleanup failed: {}", exc)
            else:
                if report.total:
                    logger.info("cleanup removed {} item(s)", report.total)

    async def start(self, app: web.Application) -> None:
        """``on_startup`` (after the store's): adopt old chunk folders (:meth:`open`),
        start the periodic cleanup."""
        await self.open()
        self._task = asyncio.create_task(self._periodic(), name="storage-cleanup")

    async def stop(self, app: web.Application) -> None:
        """``on_cleanup``: stop the periodic cleanup."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _exactly(body: AsyncIterator[bytes], expected: int, index: int) -> AsyncIterator[bytes]:
    """The bytes of ``body``, which must be exactly ``expected`` bytes long: ApiError
    INVALID_FIELD before a byte too many is passed on, or at the end when short (the
    partial then records nothing of the chunk)."""
    size = 0
    async for data in body:
        if size + len(data) > expected:
            raise ApiError(
                ApiErrorCode.INVALID_FIELD,
                f"chunk {index} must be {expected} bytes; more were sent",
            )
        size += len(data)
        yield data
    if size != expected:
        raise ApiError(
            ApiErrorCode.INVALID_FIELD, f"chunk {index} must be {expected} bytes, not {size}"
        )
