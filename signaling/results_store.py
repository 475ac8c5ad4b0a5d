"""The result store behind the storage routes: blobs, records, owners and their tokens.

One :class:`ResultsService` per app (``app[STORE_KEY]``). The blobs are behind a
blob backend (:mod:`signaling.blobs`, ``storage_backend``): each distinct content once,
by sha256 (uploads of identical bytes share a blob; a blob is removed when no live
record uses it), plus the partial uploads in progress; in the storage folder
(``blobs/ab/<sha256>``, ``partial/``; the default) or in an S3 bucket
(``blobs/<sha256>``, ``partial/``). Under the storage folder in any case:
``capability.key``, the secret signing download tokens (0600); the SQLite database
(default ``storage.db``, unless ``database_url`` names another file or a PostgreSQL
server) and, beside it, its reserve file (``<database>.reserve``, see
:mod:`signaling.disk_space`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from aiohttp import web
from loguru import logger

from rtc_worker.storage import FileMetadata, HashMismatchError, layout
from signaling.api_common import ApiError, ApiErrorCode, now_timestamp
from signaling.auth import Authenticator
from signaling.blobs import BlobBackend, BlobUpload, make_backend
from signaling.capability import (
    Capability,
    RelayCapability,
    issue,
    issue_relay,
    load_or_create_secret,
    verify_relay,
)
from signaling.config import SignalingSettings
from signaling.db import FileRecord, JobExistsError, StorageDB
from signaling.db_engine import DATABASE_ERRORS, StoreLock, is_disk_full
from signaling.disk_space import DiskReserve, ReserveFile

__all__ = ["BLOB_MODE", "STORE_KEY", "ResultsService", "StoreLock", "Stored"]

BLOB_MODE = 0o600
"""Permission bits of the service's blobs (private to the server's user)."""

T = TypeVar("T")

RESERVE_SUFFIX = ".reserve"
"""Suffix of the database's reserve file (beside the database)."""


@dataclass(frozen=True, slots=True)
class Stored:
    """The answer to an upload: the record, a download token, whether it is new.

    Attributes:
        record: the stored record.
        token: a download capability for it (see :mod:`signaling.capability`).
        expires_at: the token's expiry, ISO 8601 UTC.
        created: ``False`` when the same content was already stored under this owner
            and job (nothing changed).
    """

    record: FileRecord
    token: str
    expires_at: str
    created: bool

    def as_dict(self) -> dict[str, object]:
        """The JSON answer of ``POST /upload``."""
        return {
            "job_id": self.record.job_id,
            "owner": self.record.owner,
            "download_url": f"/download/{self.record.job_id}",
            "size": self.record.file_size,
            "sha256": self.record.sha256,
            "download_token": self.token,
            "expires_at": self.expires_at,
        }


class ResultsService:
    """The blob store plus the records (SQLite or PostgreSQL); one per app.

    Changes that touch both the blobs and the records (committing a blob and recording
    it, deleting a record and dropping its blob) run under one lock (:class:`StoreLock`,
    across instances on PostgreSQL), so a blob is never removed between another upload's
    commit and its record.

    Attributes:
        root: the storage folder.
        blobs: its objects folder (``blobs/``; used by the folder backend).
        backend: where the blobs and partial uploads are (folder or S3).
        db: the records.
        max_file_size: largest upload, bytes.
        auto_delete: delete a record after the owner's first complete download.
        token_ttl_s: lifetime of a download token, seconds.
        disk: the free space uploads must leave (folder backend only).
        reserve_file: the database's reserve file.
        auth: the key and token checks (after :meth:`open`).

    Raises:
        ValueError: storage is not enabled in ``settings``.
    """

    def __init__(self, settings: SignalingSettings) -> None:
        url = settings.database_url_value
        if settings.storage_path is None or settings.database_file is None or url is None:
            raise ValueError("storage is not enabled in these settings")
        self.root = settings.storage_path
        self.blobs = self.root / layout.SERVICE_BLOBS_DIR
        self.db = StorageDB(url)
        self.max_file_size = settings.storage_max_file_size
        self.auto_delete = settings.auto_delete
        self.partial_ttl_s = settings.upload_ttl_s
        self.token_ttl_s = settings.download_token_ttl_s
        self.disk = DiskReserve(self.root, settings.disk_reserve_bytes)
        database_file = self.db.path or settings.database_file
        self.reserve_file = ReserveFile(  # a database on a server has no file to make room for
            database_file.with_name(database_file.name + RESERVE_SUFFIX),
            0 if self.db.is_postgresql else settings.database_reserve_bytes,
        )
        self._admin_key = settings.storage_api_key_value
        self._secret = b""
        self.backend: BlobBackend = make_backend(settings, room_check=self.require_room)
        self._auth: Authenticator | None = None
        self._lock = StoreLock(self.db)
        self._pinned: collections.Counter[str] = collections.Counter()

    @property
    def auth(self) -> Authenticator:
        """The key and token checks (available after :meth:`open`)."""
        if self._auth is None:
            raise RuntimeError("the result store is not open")
        return self._auth

    def _prepare_folders(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        legacy_tmp = self.root / layout.SERVICE_LEGACY_TMP_DIR
        if legacy_tmp.is_dir():
            logger.info("removing the storage service's old temporary folder {}", legacy_tmp)
            shutil.rmtree(legacy_tmp)

    async def open(self) -> None:
        """Create the folders, migrate the database, load (or create) the token secret
        and the reserve file, remove leftovers.

        Leftovers: the ``tmp/`` folder of earlier versions, anonymous partials of
        uploads cut by a crash, and blobs no live record uses.

        Raises:
            BlobStoreError: the blob backend cannot be reached (S3: the bucket).
            OSError: a folder cannot be created or cleaned, or the secret read.
            ValueError: the secret file is not a 32-byte file.
            sqlalchemy.exc.SQLAlchemyError: the database cannot be reached or migrated.
        """
        await asyncio.to_thread(self._prepare_folders)
        await self.backend.open()
        await self.backend.drop_orphans()
        await self.db.migrate()
        self._secret = await asyncio.to_thread(load_or_create_secret, self.root)
        self._auth = Authenticator(self._admin_key, self.db, self._secret)
        await asyncio.to_thread(self.reserve_file.ensure)
        async with self._lock:
            live = await self.db.live_hashes()
            for sha256 in await self.backend.hashes():
                if sha256 not in live and not self.is_pinned(sha256):
                    logger.info("removing unreferenced blob {}", sha256)
                    await self.backend.remove(sha256)

    async def close(self) -> None:
        """Close the database's and the blob backend's connections (server shutdown)."""
        try:
            await self.db.close()
        finally:
            await self.backend.close()

    @property
    def lock(self) -> StoreLock:
        """The lock held by every change touching both blobs and records."""
        return self._lock

    @contextlib.contextmanager
    def pinning(self, sha256: str) -> Iterator[None]:
        """Keep this process's sweeps and drops off the blob of ``sha256`` for the
        block: from its copy into the store (unlocked) until its record is written
        (under :attr:`lock`)."""
        self._pinned[sha256] += 1
        try:
            yield
        finally:
            self._pinned[sha256] -= 1
            if self._pinned[sha256] <= 0:
                del self._pinned[sha256]

    def is_pinned(self, sha256: str) -> bool:
        """Whether a completion of this process is between the blob's copy and its
        record (see :meth:`pinning`)."""
        return self._pinned[sha256] > 0

    def require_room(self, incoming: int) -> None:
        """Raise ApiError DISK_FULL when ``incoming`` bytes would eat into the disk
        reserve (blocking: examines the disk). Only for a backend on this server's disk
        (the folder); an object store has no disk of ours to fill."""
        if self.backend.local_disk and not self.disk.room_for(incoming):
            raise ApiError(
                ApiErrorCode.DISK_FULL,
                "the storage disk is too full for this upload; try again later",
            )

    async def receive(self, chunks: AsyncIterator[bytes]) -> BlobUpload:
        """Stream ``chunks`` into a new anonymous partial, hashing them on the way.

        Returns:
            The open partial; :meth:`commit` it or discard it.

        Raises:
            ApiError: FILE_TOO_LARGE above :attr:`max_file_size`, DISK_FULL when the
                next batch would eat into the disk reserve (the partial is removed).
            OSError: the disk or the object store failed (the partial is removed).
        """
        partial = await self.backend.new_anonymous("upload")
        try:
            async for chunk in chunks:
                if partial.offset + len(chunk) > self.max_file_size:
                    raise ApiError(
                        ApiErrorCode.FILE_TOO_LARGE,
                        f"the file is larger than {self.max_file_size} bytes",
                    )
                await partial.append(chunk)
        except BaseException:
            await partial.discard()
            raise
        return partial

    async def drop_blob_if_unused(self, sha256: str, *, mine: bool = False) -> None:
        """Remove the blob of ``sha256`` when no live record uses it (under :attr:`lock`)
        and no other completion of this process is about to record it (``mine``: the
        caller's own :meth:`pinning` of it is not counted)."""
        if self._pinned[sha256] > (1 if mine else 0):
            return
        unused = await self.db.references(sha256) == 0
        if unused and await self.backend.remove(sha256):
            logger.debug("removed blob {}", sha256)

    async def require_blob(self, sha256: str) -> None:
        """Check, under :attr:`lock`, that the blob of ``sha256`` committed before the
        lock is still there (another instance may have dropped it as unused between
        the copy and the lock).

        Raises:
            ApiError: STORAGE_BUSY (503): it was dropped; send the content again.
        """
        if not await self.backend.has(sha256):
            raise ApiError(
                ApiErrorCode.STORAGE_BUSY,
                "the content was removed by a concurrent delete; send it again",
            )

    def token_for(self, record: FileRecord) -> tuple[str, str]:
        """A download token for ``record`` and its expiry (ISO 8601 UTC)."""
        expires_at = int(time.time() + self.token_ttl_s)
        grant = Capability(record.owner, record.job_id, record.sha256, expires_at)
        when = datetime.fromtimestamp(expires_at, UTC)
        return issue(self._secret, grant), when.strftime("%Y-%m-%dT%H:%M:%SZ")

    def relay_token(self, grant: RelayCapability) -> str:
        """The relay token of ``grant`` (:func:`~signaling.capability.issue_relay`)."""
        return issue_relay(self._secret, grant)

    def check_relay_token(self, token: str, now: float) -> RelayCapability:
        """What the relay token grants (raises CapabilityError: :func:`verify_relay`)."""
        return verify_relay(self._secret, token, now)

    async def _commit(
        self,
        owner: str,
        job_id: str,
        meta: FileMetadata,
        replace: bool,
    ) -> tuple[FileRecord, bool]:
        """Write the record of the committed blob ``meta`` (under :attr:`lock`)."""
        await self.require_blob(meta.sha256)
        existing = await self.db.get(owner, job_id)
        if existing is not None and not existing.deleted and not replace:
            if existing.sha256 == meta.sha256:
                return existing, False  # the same content again (a retried upload)
            await self.drop_blob_if_unused(meta.sha256, mine=True)
            raise _job_exists(job_id)
        record = FileRecord(
            owner=owner,
            job_id=job_id,
            file_path=self.backend.location(meta.sha256),
            file_size=meta.size,
            sha256=meta.sha256,
            mime_type=meta.mime_type,
            uploaded_at=meta.created_at,
            downloaded_at=None,
            deleted=False,
            deleted_at=None,
        )
        try:
            old = await self.db.put(record, replace=replace)
        except JobExistsError as exc:  # another instance stored it meanwhile
            if exc.existing.sha256 == meta.sha256:
                return exc.existing, False
            await self.drop_blob_if_unused(meta.sha256, mine=True)
            raise _job_exists(job_id) from None
        if old is not None and old.sha256 != record.sha256:
            await self.drop_blob_if_unused(old.sha256)
        return record, True

    async def commit(
        self,
        owner: str,
        job_id: str,
        partial: BlobUpload,
        *,
        replace: bool = False,
        sha256: str | None = None,
    ) -> Stored:
        """Store ``partial`` as the result ``job_id`` of ``owner``.

        Args:
            owner: the principal the result belongs to.
            job_id: the job (scoped by ``owner``).
            partial: the received content.
            replace: replace a live result of this owner and job; without it that is
                refused, unless its content is the same (then nothing changes).
            sha256: the declared digest of the content, checked (lowercase hex).

        Raises:
            ApiError: SHA256_MISMATCH (nothing stored), JOB_EXISTS.
            OSError, sqlalchemy.exc.SQLAlchemyError: the disk or the database failed.
        """
        try:  # the long parts (S3: completing, hashing, copying), before the lock
            verified = await partial.verify(sha256)
        except HashMismatchError as exc:
            raise ApiError(
                ApiErrorCode.SHA256_MISMATCH,
                f"the content's sha256 is {exc.actual}, not the declared {exc.expected}",
            ) from None
        with self.pinning(verified.sha256):
            meta = await partial.commit()
            async with self._lock:  # only the records and the "is the blob used" decision
                record, created = await self._commit(owner, job_id, meta, replace)
        token, expires_at = self.token_for(record)
        return Stored(record, token, expires_at, created)

    async def existing_live(self, owner: str, job_id: str) -> FileRecord | None:
        """The live record of ``job_id`` of ``owner``, or ``None``."""
        record = await self.db.get(owner, job_id)
        return None if record is None or record.deleted else record

    async def freeing(self, write: Callable[[], Awaitable[T]]) -> T:
        """Run ``write``, a database write that frees space (a delete, a cancel); when
        SQLite has no room for it, give up the reserve file and run it again.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: as ``write`` (also when the disk is still
                too full).
        """
        try:
            return await write()
        except DATABASE_ERRORS as exc:
            if not is_disk_full(exc) or not await asyncio.to_thread(self.reserve_file.release):
                raise
        return await write()

    async def _delete(self, owner: str, job_id: str) -> FileRecord:
        released = not await asyncio.to_thread(lambda: self.reserve_file.present)
        when = now_timestamp()
        before = await self.freeing(lambda: self.db.mark_deleted(owner, job_id, when))
        if before is None:
            if await self.db.get(owner, job_id) is None:
                raise ApiError(ApiErrorCode.NOT_FOUND, f"no file for job {job_id!r}")
            raise ApiError(ApiErrorCode.GONE, f"the file of job {job_id!r} was deleted")
        await self.drop_blob_if_unused(before.sha256)
        if released or not await asyncio.to_thread(lambda: self.reserve_file.present):
            await asyncio.to_thread(self.reserve_file.ensure)
        return before

    async def delete(self, owner: str, job_id: str) -> FileRecord:
        """Mark ``job_id`` of ``owner`` deleted and drop its blob when nothing else uses it.

        Works on a full disk: the database's reserve file is given up when SQLite has
        no room to record the delete.

        Raises:
            ApiError: NOT_FOUND for an unknown job, GONE when already deleted.
        """
        async with self._lock:
            return await self._delete(owner, job_id)

    async def get_live(self, owner: str, job_id: str) -> FileRecord:
        """The live record of ``job_id`` of ``owner``.

        Raises:
            ApiError: NOT_FOUND for an unknown job, GONE when deleted.
        """
        record = await self.db.get(owner, job_id)
        if record is None:
            raise ApiError(ApiErrorCode.NOT_FOUND, f"no file for job {job_id!r}")
        if record.deleted:
            raise ApiError(ApiErrorCode.GONE, f"the file of job {job_id!r} was deleted")
        return record


def _job_exists(job_id: str) -> ApiError:
    return ApiError(
        ApiErrorCode.JOB_EXISTS,
        f"a result for job {job_id!r} is stored already; send X-Replace: true to replace it",
    )


STORE_KEY: web.AppKey[ResultsService] = web.AppKey("result_store", ResultsService)
"""The app's :class:`ResultsService` (present only when storage is enabled)."""
