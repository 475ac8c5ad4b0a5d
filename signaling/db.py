"""The SQLite records of the result store (standard library ``sqlite3``).

Tables: ``files``, one row per ``(owner, job_id)`` (a job id is scoped by the principal
that owns the result); ``uploads``, one per resumable upload
(:mod:`signaling.db_uploads`); ``api_keys``, the hashed keys (:mod:`signaling.keys`).
The content lives in a content-addressed blob store (:mod:`signaling.results_api`);
``file_path`` is the blob's path relative to the storage folder, so jobs with the same
content share one blob. References are counted by query (live rows with the blob's
``sha256``; a completed, not deleted upload counts too).

Every method of :class:`StorageDB` is blocking and opens its own connection (WAL mode,
so readers do not wait for a writer; see :mod:`signaling.sqlite_file`); the async server
calls them through ``asyncio.to_thread``. The schema version is kept in ``PRAGMA
user_version`` and migrations run in :meth:`StorageDB.migrate`. Rows from before
version 3 belong to :data:`~signaling.db_uploads.LEGACY_OWNER` (reached by the admin).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from signaling.db_uploads import LEGACY_OWNER, QuotaRefusal, UploadQueries, UploadRecord
from signaling.keys import KeyQueries

__all__ = [
    "LEGACY_OWNER",
    "SCHEMA_VERSION",
    "FileRecord",
    "JobExistsError",
    "QuotaRefusal",
    "StorageDB",
    "UploadRecord",
]

SCHEMA_VERSION = 3
"""The schema version this module writes (``PRAGMA user_version``)."""

_FILE_COLUMNS_V1 = (
    "job_id, file_path, file_size, sha256, mime_type, uploaded_at, downloaded_at, deleted, "
    "deleted_at"
)

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """
        CREATE TABLE files (
            job_id        TEXT PRIMARY KEY,
            file_path     TEXT NOT NULL,
            file_size     INTEGER NOT NULL,
            sha256        TEXT NOT NULL,
            mime_type     TEXT NOT NULL DEFAULT 'application/octet-stream',
            uploaded_at   TEXT NOT NULL,
            downloaded_at TEXT,
            deleted       INTEGER NOT NULL DEFAULT 0,
            deleted_at    TEXT
        )
        """,
        "CREATE INDEX files_sha256 ON files (sha256, deleted)",
    ),
    2: (
        """
        CREATE TABLE uploads (
            upload_id     TEXT PRIMARY KEY,
            file_name     TEXT NOT NULL,
            total_size    INTEGER NOT NULL,
            user_id       TEXT NOT NULL,
            user_role     TEXT NOT NULL,
            content_type  TEXT NOT NULL,
            chunk_size    INTEGER NOT NULL,
            status        TEXT NOT NULL,
            created_at    TEXT NOT NULL,
            updated_at    TEXT NOT NULL,
            key           TEXT UNIQUE,
            sha256        TEXT,
            file_path     TEXT,
            mime_type     TEXT,
            deleted       INTEGER NOT NULL DEFAULT 0,
            deleted_at    TEXT
        )
        """,
        "CREATE INDEX uploads_sha256 ON uploads (sha256, deleted)",
        "CREATE INDEX uploads_status ON uploads (status, updated_at)",
    ),
    3: (
        """
        CREATE TABLE files_v3 (
            owner         TEXT NOT NULL,
            job_id        TEXT NOT NULL,
            file_path     TEXT NOT NULL,
            file_size     INTEGER NOT NULL,
            sha256        TEXT NOT NULL,
            mime_type     TEXT NOT NULL DEFAULT 'application/octet-stream',
            uploaded_at   TEXT NOT NULL,
            downloaded_at TEXT,
            deleted       INTEGER NOT NULL DEFAULT 0,
            deleted_at    TEXT,
            PRIMARY KEY (owner, job_id)
        )
        """,
        f"INSERT INTO files_v3 (owner, {_FILE_COLUMNS_V1}) "
        f"SELECT '{LEGACY_OWNER}', {_FILE_COLUMNS_V1} FROM files",
        "DROP TABLE files",
        "ALTER TABLE files_v3 RENAME TO files",
        "CREATE INDEX files_sha256 ON files (sha256, deleted)",
        "CREATE INDEX files_job ON files (job_id)",
        f"ALTER TABLE uploads ADD COLUMN owner TEXT NOT NULL DEFAULT '{LEGACY_OWNER}'",
        "CREATE INDEX uploads_owner ON uploads (owner, status, updated_at)",
        """
        CREATE TABLE api_keys (
            key_id      TEXT PRIMARY KEY,
            key_hash    TEXT NOT NULL,
            role        TEXT NOT NULL,
            name        TEXT NOT NULL,
            principal   TEXT NOT NULL,
            created_at  TEXT NOT NULL,
            revoked_at  TEXT
        )
        """,
    ),
}
"""Statements that bring the schema from version ``n - 1`` to ``n``."""


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

    def values(self) -> tuple[Any, ...]:
        """The values in column order, for SQL (``deleted`` as 0 or 1)."""
        return (
            self.owner,
            self.job_id,
            self.file_path,
            self.file_size,
            self.sha256,
            self.mime_type,
            self.uploaded_at,
            self.downloaded_at,
            int(self.deleted),
            self.deleted_at,
        )


_COLUMNS = f"owner, {_FILE_COLUMNS_V1}"
_WHERE_JOB = "owner = ? AND job_id = ?"


def _record(row: sqlite3.Row | tuple[Any, ...]) -> FileRecord:
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


class StorageDB(UploadQueries, KeyQueries):
    """Blocking access to the store's SQLite file; one connection per call.

    Raises (every method):
        sqlite3.Error: the database cannot be opened, is corrupt, is newer than
            :data:`SCHEMA_VERSION`, or the disk is full.
    """

    def migrate(self) -> int:
        """Create or upgrade the schema to :data:`SCHEMA_VERSION`; return the old version.

        Also switches the file to WAL mode (a persistent setting of the file) and keeps
        one idle connection open (:meth:`hold_open`; :meth:`release` closes it).
        """
        self.hold_open()
        with self.write() as conn:
            old = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if old > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"{self.path} has schema version {old}; this server knows up to "
                    f"{SCHEMA_VERSION}"
                )
            for version in range(old + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[version]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return old

    def get(self, owner: str, job_id: str) -> FileRecord | None:
        """The record of ``job_id`` of ``owner`` (deleted or not), or ``None``."""
        with self.read() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM files WHERE {_WHERE_JOB}", (owner, job_id)
            ).fetchone()
        return None if row is None else _record(row)

    def owners_of(self, job_id: str) -> list[str]:
        """The owners holding a record of ``job_id`` (deleted or not), sorted."""
        with self.read() as conn:
            rows = conn.execute(
                "SELECT owner FROM files WHERE job_id = ? ORDER BY owner", (job_id,)
            ).fetchall()
        return [str(row[0]) for row in rows]

    def records(self, owner: str | None = None) -> list[FileRecord]:
        """The records of ``owner`` (every owner's with ``None``), deleted ones included,
        oldest upload first."""
        where, args = ("WHERE owner = ?", (owner,)) if owner is not None else ("", ())
        with self.read() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM files {where} ORDER BY uploaded_at, owner, job_id", args
            ).fetchall()
        return [_record(row) for row in rows]

    def all_records(self) -> list[FileRecord]:
        """Every record of every owner (:meth:`records` with no owner)."""
        return self.records(None)

    def put(self, record: FileRecord, *, replace: bool = False) -> FileRecord | None:
        """Insert ``record``; a live record of the same owner and job is replaced only
        with ``replace`` (a deleted one always is).

        Returns:
            The record replaced, or ``None`` when there was none.

        Raises:
            JobExistsError: a live record exists and ``replace`` is false (nothing written).
        """
        with self.write() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM files WHERE {_WHERE_JOB}", (record.owner, record.job_id)
            ).fetchone()
            old = None if row is None else _record(row)
            if old is not None and not old.deleted and not replace:
                raise JobExistsError(old)
            conn.execute(
                f"INSERT OR REPLACE INTO files ({_COLUMNS}) VALUES "
                f"({', '.join('?' * len(record.values()))})",
                record.values(),
            )
        return old

    def mark_downloaded(self, owner: str, job_id: str, when: str) -> None:
        """Set ``downloaded_at`` of the record to ``when`` (no-op when unknown)."""
        with self.write() as conn:
            conn.execute(
                f"UPDATE files SET downloaded_at = ? WHERE {_WHERE_JOB}", (when, owner, job_id)
            )

    def mark_deleted(self, owner: str, job_id: str, when: str) -> FileRecord | None:
        """Mark the record of ``job_id`` of ``owner`` deleted at ``when``.

        Returns:
            The record as it was before, or ``None`` when it is unknown or was deleted
            already (nothing changed).
        """
        with self.write() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM files WHERE {_WHERE_JOB} AND deleted = 0",
                (owner, job_id),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                f"UPDATE files SET deleted = 1, deleted_at = ? WHERE {_WHERE_JOB}",
                (when, owner, job_id),
            )
        return _record(row)

    def references(self, sha256: str) -> int:
        """How many live records (files and completed uploads) use the blob of ``sha256``."""
        with self.read() as conn:
            row = conn.execute(
                "SELECT (SELECT COUNT(*) FROM files WHERE sha256 = ? AND deleted = 0)"
                " + (SELECT COUNT(*) FROM uploads WHERE sha256 = ? AND deleted = 0"
                " AND status = 'completed')",
                (sha256, sha256),
            ).fetchone()
        return int(row[0])

    def live_hashes(self) -> set[str]:
        """The ``sha256`` of every live record and completed upload (blobs to keep)."""
        with self.read() as conn:
            rows = conn.execute(
                "SELECT sha256 FROM files WHERE deleted = 0 UNION SELECT sha256 FROM uploads"
                " WHERE deleted = 0 AND status = 'completed' AND sha256 IS NOT NULL"
            ).fetchall()
        return {str(row[0]) for row in rows}

    def purge_deleted_files(self, cutoff: str) -> list[FileRecord]:
        """Remove the rows of ``files`` deleted before ``cutoff``; return them."""
        with self.write() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM files WHERE deleted = 1 AND deleted_at < ?", (cutoff,)
            ).fetchall()
            conn.execute("DELETE FROM files WHERE deleted = 1 AND deleted_at < ?", (cutoff,))
        return [_record(row) for row in rows]
