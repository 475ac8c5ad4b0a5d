"""The ``uploads`` table of the storage service: one row per resumable upload.

Each upload belongs to the principal whose key created it (``owner``); the quota of
open uploads per owner is checked in the same transaction that inserts a new one
(:meth:`UploadQueries.create_upload_within`), under a lock on the owner (SQLite: the
write transaction; PostgreSQL: :meth:`~signaling.db_engine.Database.lock_owner`), so
two concurrent requests, to one instance or to two, cannot both squeeze under it. See
:mod:`signaling.uploads_api` for the routes.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update

from signaling.db_engine import Database
from signaling.db_schema import UNFINISHED, uploads

__all__ = ["LEGACY_OWNER", "QuotaRefusal", "UploadQueries", "UploadRecord"]

LEGACY_OWNER = ":legacy"
"""Owner of rows written before records had owners (no key can act as it; admin only)."""

_STALE = ("initiated", "in_progress", "cancelled")

_UPLOAD_FIELDS = (
    "upload_id",
    "file_name",
    "total_size",
    "user_id",
    "user_role",
    "content_type",
    "chunk_size",
    "status",
    "created_at",
    "updated_at",
    "key",
    "sha256",
    "file_path",
    "mime_type",
    "deleted",
    "deleted_at",
    "owner",
    "result_owner",
    "result_job_id",
    "relay",
)
_UPLOAD_COLUMNS = tuple(uploads.c[name] for name in _UPLOAD_FIELDS)


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


class QuotaRefusal(enum.Enum):
    """Why :meth:`UploadQueries.create_upload_within` refused a new upload."""

    COUNT = "count"
    """The owner already has the largest number of open uploads."""
    BYTES = "bytes"
    """The announced sizes of the owner's open uploads would exceed the byte quota."""


@dataclass(frozen=True, slots=True)
class UploadRecord:
    """One row of ``uploads``: a resumable chunked upload.

    Attributes:
        upload_id: 32 lowercase hex digits.
        file_name: the base name given by the uploader.
        total_size: announced length in bytes.
        user_id: the uploader's label (``[A-Za-z0-9._-]{1,64}``), part of the key.
        user_role: the uploader's label for its role (same grammar), part of the key.
        content_type: MIME type given by the uploader.
        chunk_size: bytes per chunk (the last one may be shorter).
        status: ``initiated``, ``in_progress``, ``completed`` or ``cancelled``.
        created_at: ISO 8601 UTC, second precision.
        updated_at: time of the last change, same format.
        key: the storage key once completed, else ``None``.
        sha256: SHA-256 of the content once completed, else ``None``.
        file_path: the blob's path relative to the storage folder once completed.
        mime_type: MIME type detected from the content once completed.
        deleted: whether the completed upload was deleted.
        deleted_at: when it was deleted, or ``None``.
        owner: the principal whose key created it (only it, or an admin, may use it).
        result_owner: the principal whose result of ``result_job_id`` the content is
            also stored as once completed (a tus result upload), else ``None``.
        result_job_id: that result's job id, else ``None``.
        relay: whether it is a relay object (:mod:`signaling.relay_routes`): read with a
            relay token until ``relay_ttl_s`` after its completion, then removed.
    """

    upload_id: str
    file_name: str
    total_size: int
    user_id: str
    user_role: str
    content_type: str
    chunk_size: int
    status: str
    created_at: str
    updated_at: str
    key: str | None = None
    sha256: str | None = None
    file_path: str | None = None
    mime_type: str | None = None
    deleted: bool = False
    deleted_at: str | None = None
    owner: str = LEGACY_OWNER
    result_owner: str | None = None
    result_job_id: str | None = None
    relay: bool = False

    @property
    def total_chunks(self) -> int:
        """How many chunks make the file (0 for an empty file)."""
        return -(-self.total_size // self.chunk_size)

    def chunk_length(self, index: int) -> int:
        """The exact length in bytes of chunk ``index`` (``0 <= index < total_chunks``)."""
        return min(self.chunk_size, self.total_size - index * self.chunk_size)

    def row(self) -> dict[str, Any]:
        """The values by column name, for SQL (``deleted`` as 0 or 1)."""
        return {
            name: int(value) if isinstance(value, bool) else value
            for name, value in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> UploadRecord:
        """Build a record from a row in column order."""
        return cls(
            upload_id=str(row[0]),
            file_name=str(row[1]),
            total_size=int(row[2]),
            user_id=str(row[3]),
            user_role=str(row[4]),
            content_type=str(row[5]),
            chunk_size=int(row[6]),
            status=str(row[7]),
            created_at=str(row[8]),
            updated_at=str(row[9]),
            key=_opt(row[10]),
            sha256=_opt(row[11]),
            file_path=_opt(row[12]),
            mime_type=_opt(row[13]),
            deleted=bool(row[14]),
            deleted_at=_opt(row[15]),
            owner=str(row[16]),
            result_owner=_opt(row[17]),
            result_job_id=_opt(row[18]),
            relay=bool(row[19]),
        )


class UploadQueries(Database):
    """The queries of ``uploads`` (coroutines; see :class:`~signaling.db.StorageDB`)."""

    async def create_upload_within(
        self,
        record: UploadRecord,
        cutoff: str,
        max_count: int,
        max_bytes: int,
        relay_cutoff: str | None = None,
    ) -> QuotaRefusal | None:
        """Insert ``record`` unless its owner's open uploads would pass the quota.

        Open uploads are the owner's unfinished ones changed at or after ``cutoff``
        (older ones are expired and about to be removed) and, with ``relay_cutoff``, its
        live relay objects (completed at or after ``relay_cutoff``: they hold the disk
        until they are deleted or expire); the check and the insert are one transaction
        holding the owner's lock.

        Args:
            record: the new upload.
            cutoff: ISO 8601 UTC time before which an unfinished upload has expired.
            max_count: most open uploads per owner.
            max_bytes: most announced bytes of open uploads per owner.
            relay_cutoff: ISO 8601 UTC time before which a relay object has expired, or
                ``None`` not to count relay objects.

        Returns:
            ``None`` when inserted, else why not (nothing was written).
        """
        counted = uploads.c.status.in_(UNFINISHED) & (uploads.c.updated_at >= cutoff)
        if relay_cutoff is not None:
            counted = counted | (
                (uploads.c.relay == 1)
                & (uploads.c.status == "completed")
                & (uploads.c.updated_at >= relay_cutoff)
            )
        query = select(func.count(), func.coalesce(func.sum(uploads.c.total_size), 0)).where(
            uploads.c.owner == record.owner, counted
        )
        async with self.write() as conn:
            await self.lock_owner(conn, record.owner)
            count, total = (await conn.execute(query)).one()
            if int(count) >= max_count:
                return QuotaRefusal.COUNT
            if int(total) + record.total_size > max_bytes:
                return QuotaRefusal.BYTES
            await conn.execute(uploads.insert().values(**record.row()))
        return None

    async def open_upload_bytes(self, cutoff: str) -> int:
        """Announced bytes of every unfinished upload changed at or after ``cutoff``."""
        query = select(func.coalesce(func.sum(uploads.c.total_size), 0)).where(
            uploads.c.status.in_(UNFINISHED), uploads.c.updated_at >= cutoff
        )
        async with self.read() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def get_upload(self, upload_id: str) -> UploadRecord | None:
        """The upload ``upload_id``, or ``None`` when unknown."""
        query = select(*_UPLOAD_COLUMNS).where(uploads.c.upload_id == upload_id)
        async with self.read() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else UploadRecord.from_row(row)

    async def all_uploads(self) -> list[UploadRecord]:
        """Every upload, oldest first."""
        query = select(*_UPLOAD_COLUMNS).order_by(uploads.c.created_at, uploads.c.upload_id)
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
        return [UploadRecord.from_row(row) for row in rows]

    async def set_upload_status(
        self, upload_id: str, status: str, when: str, only_from: tuple[str, ...]
    ) -> str | None:
        """Set the status of ``upload_id`` to ``status`` if it is one of ``only_from``.

        Returns:
            The status before the call (unchanged when not in ``only_from``), or
            ``None`` when the upload is unknown.
        """
        where = uploads.c.upload_id == upload_id
        async with self.write() as conn:
            row = (
                await conn.execute(select(uploads.c.status).where(where).with_for_update())
            ).first()
            if row is None:
                return None
            before = str(row[0])
            if before in only_from:
                await conn.execute(
                    update(uploads).where(where).values(status=status, updated_at=when)
                )
        return before

    async def key_taken(self, key: str) -> bool:
        """Whether an upload already holds ``key``."""
        async with self.read() as conn:
            row = (
                await conn.execute(select(uploads.c.upload_id).where(uploads.c.key == key))
            ).first()
        return row is not None

    async def complete_upload(
        self, upload_id: str, key: str, sha256: str, file_path: str, mime_type: str, when: str
    ) -> bool:
        """Mark an unfinished upload completed with its key and blob.

        Returns:
            ``False`` when the upload is unknown or not unfinished (nothing changed).

        Raises:
            sqlalchemy.exc.IntegrityError: ``key`` is taken.
        """
        query = (
            update(uploads)
            .where(uploads.c.upload_id == upload_id, uploads.c.status.in_(UNFINISHED))
            .values(
                status="completed",
                key=key,
                sha256=sha256,
                file_path=file_path,
                mime_type=mime_type,
                updated_at=when,
            )
        )
        async with self.write() as conn:
            result = await conn.execute(query)
        return result.rowcount == 1

    async def stale_uploads(self, cutoff: str) -> list[UploadRecord]:
        """Unfinished or cancelled uploads last changed before ``cutoff``."""
        query = select(*_UPLOAD_COLUMNS).where(
            uploads.c.status.in_(_STALE), uploads.c.updated_at < cutoff
        )
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
        return [UploadRecord.from_row(row) for row in rows]

    async def delete_upload(self, upload_id: str, cutoff: str) -> bool:
        """Remove the row of an unfinished or cancelled upload last changed before ``cutoff``.

        Returns:
            Whether a row was removed (an upload touched meanwhile is kept).
        """
        query = delete(uploads).where(
            uploads.c.upload_id == upload_id,
            uploads.c.status.in_(_STALE),
            uploads.c.updated_at < cutoff,
        )
        async with self.write() as conn:
            result = await conn.execute(query)
        return result.rowcount == 1

    async def remove_relay_object(self, upload_id: str) -> UploadRecord | None:
        """Remove the row of the completed relay object ``upload_id``; the row removed,
        or ``None`` when there was none (its blob is the caller's to drop if unused)."""
        where = (
            (uploads.c.upload_id == upload_id)
            & (uploads.c.relay == 1)
            & (uploads.c.status == "completed")
        )
        async with self.write() as conn:
            found = select(*_UPLOAD_COLUMNS).where(where).with_for_update()
            row = (await conn.execute(found)).first()
            if row is None or (await conn.execute(delete(uploads).where(where))).rowcount != 1:
                return None
        return UploadRecord.from_row(row)

    async def expired_relay_objects(self, cutoff: str) -> list[UploadRecord]:
        """Completed relay objects completed before ``cutoff`` (expired)."""
        query = select(*_UPLOAD_COLUMNS).where(
            uploads.c.relay == 1, uploads.c.status == "completed", uploads.c.updated_at < cutoff
        )
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
        return [UploadRecord.from_row(row) for row in rows]

    async def upload_ids(self) -> set[str]:
        """The id of every upload."""
        async with self.read() as conn:
            rows = (await conn.execute(select(uploads.c.upload_id))).all()
        return {str(row[0]) for row in rows}

    async def set_upload_times(self, upload_id: str, created_at: str, updated_at: str) -> None:
        """Overwrite the timestamps of ``upload_id`` (maintenance and tests)."""
        query = (
            update(uploads)
            .where(uploads.c.upload_id == upload_id)
            .values(created_at=created_at, updated_at=updated_at)
        )
        async with self.write() as conn:
            await conn.execute(query)
