"""The records of the result store, on SQLite or PostgreSQL (SQLAlchemy Core, async).

Tables (:mod:`signaling.db_schema`): ``files``, one row per ``(owner, job_id)`` (a job
id is scoped by the principal that owns the result); ``uploads``, one per resumable
upload (:mod:`signaling.db_uploads`); ``api_keys``, the hashed keys
(:mod:`signaling.keys`). The content lives in a content-addressed blob store
(:mod:`signaling.results_store`); ``file_path`` is the blob's path relative to the
storage folder, so jobs with the same content share one blob. References are counted by
query (live rows with the blob's ``sha256``; a completed, not deleted upload counts too).

Every method of :class:`StorageDB` is a coroutine running one transaction (see
:mod:`signaling.db_engine` for the engines, the transactions and the locks). The schema
is kept by Alembic (:meth:`~signaling.db_engine.Database.migrate`). Rows from before
owners existed belong to :data:`~signaling.db_uploads.LEGACY_OWNER` (reached by the
admin).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, union, update

from signaling.db_engine import Database, is_unique_violation
from signaling.db_schema import files, uploads
from signaling.db_uploads import LEGACY_OWNER, QuotaRefusal, UploadQueries, UploadRecord
from signaling.keys import KeyQueries

__all__ = [
    "LEGACY_OWNER",
    "FileRecord",
    "JobExistsError",
    "QuotaRefusal",
    "StorageDB",
    "UploadRecord",
]


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One row of ``files``.

    Attributes:
        owner: the principal the result belongs to.
        job_id: the job the file belongs to (``[A-Za-z0-9._-]{1,64}``, not only dots),
            unique per owner.
        file_path: the blob's path relative to the storage folder.
        file_size: length in bytes.
        sha256: SHA-256 of the content, lowercase hex.
        mime_type: MIME type detected from the first bytes.
        uploaded_at: ISO 8601 UTC, second precision.
        downloaded_at: time of the last complete download, or ``None``.
        deleted: whether the record was deleted (downloads answer 410).
        deleted_at: when it was deleted, or ``None``.
    """

    owner: str
    job_id: str
    file_path: str
    file_size: int
    sha256: str
    mime_type: str
    uploaded_at: str
    downloaded_at: str | None
    deleted: bool
    deleted_at: str | None

    def as_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (without the internal ``file_path``)."""
        return {
            "job_id": self.job_id,
            "owner": self.owner,
            "download_url": f"/download/{self.job_id}",
            "size": self.file_size,
            "sha256": self.sha256,
            "mime_type": self.mime_type,
            "uploaded_at": self.uploaded_at,
            "downloaded_at": self.downloaded_at,
            "deleted": self.deleted,
            "deleted_at": self.deleted_at,
        }

    def values(self) -> dict[str, Any]:
        """The values by column name, for SQL (``deleted`` as 0 or 1)."""
        return {
            "owner": self.owner,
            "job_id": self.job_id,
            "file_path": self.file_path,
            "file_size": self.file_size,
            "sha256": self.sha256,
            "mime_type": self.mime_type,
            "uploaded_at": self.uploaded_at,
            "downloaded_at": self.downloaded_at,
            "deleted": int(self.deleted),
            "deleted_at": self.deleted_at,
        }


_COLUMNS = (
    files.c.owner,
    files.c.job_id,
    files.c.file_path,
    files.c.file_size,
    files.c.sha256,
    files.c.mime_type,
    files.c.uploaded_at,
    files.c.downloaded_at,
    files.c.deleted,
    files.c.deleted_at,
)


def _where_job(owner: str, job_id: str) -> Any:
    return (files.c.owner == owner) & (files.c.job_id == job_id)


def _record(row: Sequence[Any]) -> FileRecord:
    return FileRecord(
        owner=str(row[0]),
        job_id=str(row[1]),
        file_path=str(row[2]),
        file_size=int(row[3]),
        sha256=str(row[4]),
        mime_type=str(row[5]),
        uploaded_at=str(row[6]),
        downloaded_at=None if row[7] is None else str(row[7]),
        deleted=bool(row[8]),
        deleted_at=None if row[9] is None else str(row[9]),
    )


class JobExistsError(Exception):
    """:meth:`StorageDB.put` without ``replace`` found a live record of that owner and job.

    Attributes:
        existing: the live record.
    """

    def __init__(self, existing: FileRecord) -> None:
        super().__init__(f"job {existing.job_id!r} of {existing.owner!r} exists")
        self.existing = existing


class StorageDB(UploadQueries, KeyQueries, Database):
    """The store's database (SQLite file or PostgreSQL); every query is a coroutine.

    Args:
        url: ``sqlite:///<file>``, ``postgresql://...``, or a SQLite file's path.

    Raises (every method):
        sqlalchemy.exc.SQLAlchemyError: the database cannot be reached, is newer than
            this code, or the disk is full.
    """

    async def get(self, owner: str, job_id: str) -> FileRecord | None:
        """The record of ``job_id`` of ``owner`` (deleted or not), or ``None``."""
        async with self.read() as conn:
            row = (await conn.execute(select(*_COLUMNS).where(_where_job(owner, job_id)))).first()
        return None if row is None else _record(row)

    async def owners_of(self, job_id: str) -> list[str]:
        """The owners holding a record of ``job_id`` (deleted or not), sorted."""
        query = select(files.c.owner).where(files.c.job_id == job_id).order_by(files.c.owner)
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
        return [str(row[0]) for row in rows]

    async def records(self, owner: str | None = None) -> list[FileRecord]:
        """The records of ``owner`` (every owner's with ``None``), deleted ones included,
        oldest upload first."""
        query = select(*_COLUMNS).order_by(files.c.uploaded_at, files.c.owner, files.c.job_id)
        if owner is not None:
            query = query.where(files.c.owner == owner)
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
        return [_record(row) for row in rows]

    async def all_records(self) -> list[FileRecord]:
        """Every record of every owner (:meth:`records` with no owner)."""
        return await self.records(None)

    async def put(self, record: FileRecord, *, replace: bool = False) -> FileRecord | None:
        """Insert ``record``; a live record of the same owner and job is replaced only
        with ``replace`` (a deleted one always is).

        The row is locked while checked (``FOR UPDATE``); two inserts of a new job race
        on the primary key and the loser sees the winner's record.

        Returns:
            The record replaced, or ``None`` when there was none.

        Raises:
            JobExistsError: a live record exists and ``replace`` is false (nothing written).
        """
        for attempt in range(2):
            try:
                return await self._put(record, replace)
            except Exception as error:
                if not is_unique_violation(error) or attempt:
                    raise
        raise AssertionError("unreachable")

    async def _put(self, record: FileRecord, replace: bool) -> FileRecord | None:
        where = _where_job(record.owner, record.job_id)
        async with self.write() as conn:
            row = (await conn.execute(select(*_COLUMNS).where(where).with_for_update())).first()
            old = None if row is None else _record(row)
            if old is not None and not old.deleted and not replace:
                raise JobExistsError(old)
            if old is None:
                await conn.execute(files.insert().values(**record.values()))
            else:
                await conn.execute(update(files).where(where).values(**record.values()))
        return old

    async def mark_downloaded(self, owner: str, job_id: str, when: str) -> None:
        """Set ``downloaded_at`` of the record to ``when`` (no-op when unknown)."""
        async with self.write() as conn:
            await conn.execute(
                update(files).where(_where_job(owner, job_id)).values(downloaded_at=when)
            )

    async def mark_deleted(self, owner: str, job_id: str, when: str) -> FileRecord | None:
        """Mark the record of ``job_id`` of ``owner`` deleted at ``when``.

        Returns:
            The record as it was before, or ``None`` when it is unknown or was deleted
            already (nothing changed).
        """
        where = _where_job(owner, job_id)
        async with self.write() as conn:
            query = select(*_COLUMNS).where(where, files.c.deleted == 0).with_for_update()
            row = (await conn.execute(query)).first()
            if row is None:
                return None
            await conn.execute(update(files).where(where).values(deleted=1, deleted_at=when))
        return _record(row)

    async def references(self, sha256: str) -> int:
        """How many live records (files and completed uploads) use the blob of ``sha256``."""
        in_files = (
            select(func.count())
            .select_from(files)
            .where(files.c.sha256 == sha256, files.c.deleted == 0)
            .scalar_subquery()
        )
        in_uploads = (
            select(func.count())
            .select_from(uploads)
            .where(
                uploads.c.sha256 == sha256,
                uploads.c.deleted == 0,
                uploads.c.status == "completed",
            )
            .scalar_subquery()
        )
        async with self.read() as conn:
            total = (await conn.execute(select(in_files + in_uploads))).scalar_one()
        return int(total)

    async def live_hashes(self) -> set[str]:
        """The ``sha256`` of every live record and completed upload (blobs to keep)."""
        query = union(
            select(files.c.sha256).where(files.c.deleted == 0),
            select(uploads.c.sha256).where(
                uploads.c.deleted == 0,
                uploads.c.status == "completed",
                uploads.c.sha256.is_not(None),
            ),
        )
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
        return {str(row[0]) for row in rows}

    async def purge_deleted_files(self, cutoff: str) -> list[FileRecord]:
        """Remove the rows of ``files`` deleted before ``cutoff``; return them."""
        old = (files.c.deleted == 1) & (files.c.deleted_at < cutoff)
        async with self.write() as conn:
            rows = (await conn.execute(select(*_COLUMNS).where(old).with_for_update())).all()
            await conn.execute(delete(files).where(old))
        return [_record(row) for row in rows]
