"""Writes at an offset into a resumable upload, for clients that send its bytes in
order (tus, :mod:`signaling.tus`), and completing one as a job's result.

A mixin of :class:`~signaling.upload_manager.UploadManager`: the same records, quotas,
owners and partial uploads of the blob backend (:mod:`signaling.blobs`) as the chunk
routes of :mod:`signaling.uploads_api`; an upload is written by ranges either way, so
both kinds of request may serve it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from loguru import logger

from rtc_worker.storage import format_timestamp, parse_timestamp
from signaling.api_common import ApiError, ApiErrorCode
from signaling.auth import Caller
from signaling.blobs import BlobNotFoundError
from signaling.db import UploadRecord
from signaling.db_schema import UNFINISHED
from signaling.results_store import Stored
from signaling.upload_fields import GENERIC_TYPES

if TYPE_CHECKING:
    from rtc_worker.storage import FileMetadata
    from signaling.blobs import BlobUpload
    from signaling.results_store import ResultsService

__all__ = ["TOUCH_EVERY_S", "OffsetWrites"]

TOUCH_EVERY_S = 60.0
"""An upload in progress changed less than this long ago (or a tenth of its time to live,
if shorter) is not marked changed again by a write, seconds: no database write per PATCH.
Its expiry then runs from the earlier change, which the caller is told."""


class _Manager(Protocol):
    """What the mixin uses of :class:`~signaling.upload_manager.UploadManager`."""

    store: ResultsService
    ttl_s: float

    async def record(self, upload_id: str, caller: Caller | None = None) -> UploadRecord: ...
    def require_open(self, record: UploadRecord) -> None: ...
    async def _acquire(self, record: UploadRecord) -> BlobUpload: ...
    async def _release(self, upload_id: str, *, discard: bool = False) -> None: ...
    async def _commit(
        self, record: UploadRecord, meta: FileMetadata, mime: str
    ) -> UploadRecord: ...
    async def cancel(self, upload_id: str, caller: Caller) -> UploadRecord: ...
    async def held_bytes(self, record: UploadRecord) -> int: ...
    async def _touch(self, record: UploadRecord) -> UploadRecord: ...


class OffsetWrites:
    """Offset writes and result completion of :class:`UploadManager` (see the module
    docstring)."""

    async def held_bytes(self: _Manager, record: UploadRecord) -> int:
        """Bytes of ``record`` held from offset 0 without a gap: where the next byte of
        an upload written in order goes (the tus ``Upload-Offset``); ``total_size`` once
        completed, 0 once cancelled."""
        if record.status == "completed":
            return record.total_size
        if record.status == "cancelled":
            return 0
        ranges = await self.store.backend.upload_ranges(record.upload_id)
        return ranges[0][1] if ranges and ranges[0][0] == 0 else 0

    async def keep_open(self: _Manager, record: UploadRecord) -> None:
        """Keep the unfinished upload's partial open until :meth:`let_go`, across
        requests: with the folder backend the SHA-256 computed while its bytes arrive in
        order is then still there for :meth:`complete` (else it hashes the file again
        from disk; the S3 backend always hashes the assembled object once).
        :meth:`complete` and :meth:`cancel` close it anyway (:meth:`let_go` is then a
        no-op).

        Raises:
            ApiError: UPLOAD_NOT_FOUND / UPLOAD_COMPLETED unless ``record`` is unfinished.
        """
        self.require_open(record)
        await self._acquire(record)

    async def let_go(self: _Manager, upload_id: str) -> None:
        """End one :meth:`keep_open` (the last user closes the partial, keeping it)."""
        await self._release(upload_id)

    async def put_bytes(
        self: _Manager,
        upload_id: str,
        offset: int,
        body: AsyncIterator[bytes],
        caller: Caller,
        *,
        keep_on_error: bool = False,
        known: UploadRecord | None = None,
    ) -> tuple[int, UploadRecord]:
        """Stream ``body`` into the upload's partial from byte ``offset`` (never whole in
        memory), make it durable and record it as held.

        Args:
            upload_id: the upload.
            offset: where the first byte goes, ``0 <= offset <= total_size``.
            body: the bytes, in pieces (1 MiB each is a good size).
            caller: who asks (its owner or an admin).
            keep_on_error: when ``body`` (or a write) raises, still record the bytes
                that arrived before (a connection cut mid-body); else nothing is
                recorded (the write is atomic). After an ApiError (a refusal of ours)
                nothing is recorded either, except, with ``keep_on_error`` on the S3
                backend, whole parts sent before it (bytes at their right offsets).
            known: the upload as the caller has just read it for ``caller`` (saves a
                read), or ``None``.

        Returns:
            How many bytes were written and recorded, and the upload's record after
            them (in progress; its ``updated_at``, where its expiry runs from, is moved
            to now unless it changed less than :data:`TOUCH_EVERY_S` ago).

        Raises:
            ApiError: INVALID_FIELD for an offset out of range; FILE_TOO_LARGE when the
                bytes run past ``total_size``; UPLOAD_NOT_FOUND / UPLOAD_COMPLETED as
                for :meth:`record`; DISK_FULL when a piece would eat into the disk
                reserve. Whatever ``body`` raises is raised again.
        """
        record = known if known is not None else await self.record(upload_id, caller)
        self.require_open(record)
        if not 0 <= offset <= record.total_size:
            raise ApiError(ApiErrorCode.INVALID_FIELD, f"offset must be in 0..{record.total_size}")
        cut: list[Exception] = []  # what ``body`` raised, when what arrived is kept

        async def bounded() -> AsyncIterator[bytes]:
            end = offset
            try:
                async for data in body:
                    if end + len(data) > record.total_size:
                        raise ApiError(
                            ApiErrorCode.FILE_TOO_LARGE,
                            f"the bytes run past the upload's length of {record.total_size} bytes",
                        )
                    end += len(data)
                    yield data
            except ApiError:  # a refusal of ours keeps nothing
                raise
            except Exception as exc:
                if not keep_on_error:
                    raise
                cut.append(exc)  # the stream ends here: what arrived is recorded

        partial = await self._acquire(record)
        try:
            # without keep_on_error (a checksum) a failed body must leave nothing held
            size = await partial.write_range(offset, bounded(), atomic=not keep_on_error)
        except (ValueError, BlobNotFoundError) as exc:  # discarded by a cancel meanwhile?
            self.require_open(await self.record(upload_id))
            raise ApiError(ApiErrorCode.UPLOAD_NOT_FOUND, f"upload {upload_id!r} is gone") from exc
        finally:
            await self._release(upload_id)
        touched = record
        if size or not cut:
            touched = await self._touch(record)
        if cut:
            raise cut[0]
        return size, touched

    async def _touch(self: _Manager, record: UploadRecord) -> UploadRecord:
        """Mark the upload in progress, changed now (its expiry moves on), unless it is
        in progress and changed less than :data:`TOUCH_EVERY_S` ago; the record after."""
        now = datetime.now(UTC)
        changed = parse_timestamp(record.updated_at)
        recent = timedelta(seconds=min(TOUCH_EVERY_S, self.ttl_s / 10))
        if record.status == "in_progress" and timedelta(0) <= now - changed < recent:
            return record  # a cancel meanwhile discarded the partial: mark_present refused
        when = format_timestamp(now)
        upload_id = record.upload_id
        before = await self.store.db.set_upload_status(upload_id, "in_progress", when, UNFINISHED)
        if before is None or before not in UNFINISHED:
            # Completed or cancelled while the bytes streamed: they are not wanted.
            self.require_open(await self.record(upload_id))
        return dataclasses.replace(record, status="in_progress", updated_at=when)

    async def complete_result(
        self: _Manager, upload_id: str, caller: Caller, owner: str, job_id: str
    ) -> tuple[UploadRecord, Stored]:
        """Complete the upload as :meth:`complete` does and also store its content as
        the result ``job_id`` of ``owner`` (the record ``POST /upload`` makes, served by
        ``GET /download/{job_id}``); one blob for both.

        Raises:
            ApiError: INVALID_FIELD when bytes are missing; JOB_EXISTS when ``owner``
                holds a live result of ``job_id`` with other content (the upload is then
                cancelled: nothing is kept); UPLOAD_NOT_FOUND / UPLOAD_COMPLETED as for
                :meth:`record`.
        """
        record = await self.record(upload_id, caller)
        self.require_open(record)
        if await self.held_bytes(record) != record.total_size:
            raise ApiError(ApiErrorCode.INVALID_FIELD, f"upload {upload_id!r} is not complete")
        partial = await self._acquire(record)
        try:
            stored = await self.store.commit(owner, job_id, partial)
        except BaseException as exc:
            gone = partial.closed  # verified and refused: its bytes are gone
            await self._release(upload_id, discard=gone)
            if gone:
                await self.cancel(upload_id, caller)
            if isinstance(exc, ValueError):
                raise ApiError(
                    ApiErrorCode.INVALID_FIELD, f"the bytes could not be verified: {exc}"
                ) from None
            raise
        try:
            meta = await partial.commit()  # committed: its metadata again
            mime = meta.mime_type
            if mime.split(";", 1)[0].strip().lower() in GENERIC_TYPES:
                mime = record.content_type
            with self.store.pinning(meta.sha256):
                async with self.store.lock:
                    done = await self._commit(record, meta, mime)
        finally:
            await self._release(upload_id, discard=True)
        logger.info("upload {} stored as job {!r} of {}", upload_id, job_id, owner)
        return done, stored
