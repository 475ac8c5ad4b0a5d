"""The SQLite records of the result store (standard library ``sqlite3``).

One row per ``job_id`` in ``files``. The content itself lives in a content-addressed
blob store (see :mod:`signaling.storage_api`); ``file_path`` is the blob's path relative
to the storage folder, so several jobs with the same content share one blob. A blob's
references are counted by query (live rows with its ``sha256``), so no counter can
drift from the rows.

Every method of :class:`StorageDB` is blocking and opens its own connection (WAL mode,
so readers do not wait for a writer); the async server calls them through
``asyncio.to_thread``. The schema version is kept in ``PRAGMA user_version`` and
migrations run in :meth:`StorageDB.migrate`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA_VERSION", "FileRecord", "StorageDB"]

SCHEMA_VERSION = 1
"""The schema version this module writes (``PRAGMA user_version``)."""

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
}
"""Statements that bring the schema from version ``n - 1`` to ``n``."""

_BUSY_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One row of ``files``.

    Attributes:
        job_id: the job the file belongs to (``[A-Za-z0-9._-]{1,64}``).
        file_path: the blob's path relative to the storage folder.
        file_size: length in bytes.
        sha256: SHA-256 of the content, lowercase hex.
        mime_type: MIME type detected from the first bytes.
        uploaded_at: ISO 8601 UTC, second precision.
        downloaded_at: time of the last complete download, or ``None``.
        deleted: whether the record was deleted (downloads answer 410).
        deleted_at: when it was deleted, or ``None``.
    """

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
            "download_url": f"/download/{self.job_id}",
            "size": self.file_size,
            "sha256": self.sha256,
            "mime_type": self.mime_type,
            "uploaded_at": self.uploaded_at,
            "downloaded_at": self.downloaded_at,
            "deleted": self.deleted,
            "deleted_at": self.deleted_at,
        }


_COLUMNS = (
    "job_id, file_path, file_size, sha256, mime_type, uploaded_at, downloaded_at, deleted, "
    "deleted_at"
)


def _record(row: sqlite3.Row | tuple[Any, ...]) -> FileRecord:
    return FileRecord(
        job_id=str(row[0]),
        file_path=str(row[1]),
        file_size=int(row[2]),
        sha256=str(row[3]),
        mime_type=str(row[4]),
        uploaded_at=str(row[5]),
        downloaded_at=None if row[6] is None else str(row[6]),
        deleted=bool(row[7]),
        deleted_at=None if row[8] is None else str(row[8]),
    )


class StorageDB:
    """Blocking access to the store's SQLite file; one connection per call.

    Raises (every method):
        sqlite3.Error: the database cannot be opened, is corrupt, or is newer than
            :data:`SCHEMA_VERSION`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in one transaction: committed on success, rolled back on error."""
        conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_SECONDS, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    def migrate(self) -> int:
        """Create or upgrade the schema to :data:`SCHEMA_VERSION`; return the old version.

        Also switches the file to WAL mode (a persistent setting of the file).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_SECONDS, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
        finally:
            conn.close()
        with self._connect() as conn:
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

    def get(self, job_id: str) -> FileRecord | None:
        """The record of ``job_id`` (deleted or not), or ``None`` when unknown."""
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM files WHERE job_id = ?", (job_id,)
            ).fetchone()
        return None if row is None else _record(row)

    def all_records(self) -> list[FileRecord]:
        """Every record, deleted ones included, oldest upload first."""
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM files ORDER BY uploaded_at, job_id"
            ).fetchall()
        return [_record(row) for row in rows]

    def put(self, record: FileRecord) -> FileRecord | None:
        """Insert ``record``, replacing any record of the same ``job_id``.

        Returns:
            The replaced record, or ``None`` when the job_id was new.
        """
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM files WHERE job_id = ?", (record.job_id,)
            ).fetchone()
            conn.execute(
                f"INSERT OR REPLACE INTO files ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.job_id,
                    record.file_path,
                    record.file_size,
                    record.sha256,
                    record.mime_type,
                    record.uploaded_at,
                    record.downloaded_at,
                    int(record.deleted),
                    record.deleted_at,
                ),
            )
        return None if row is None else _record(row)

    def mark_downloaded(self, job_id: str, when: str) -> None:
        """Set ``downloaded_at`` of ``job_id`` to ``when`` (no-op when unknown)."""
        with self._connect() as conn:
            conn.execute("UPDATE files SET downloaded_at = ? WHERE job_id = ?", (when, job_id))

    def mark_deleted(self, job_id: str, when: str) -> FileRecord | None:
        """Mark ``job_id`` deleted at ``when``.

        Returns:
            The record as it was before, or ``None`` when ``job_id`` is unknown or was
            deleted already (nothing changed).
        """
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM files WHERE job_id = ? AND deleted = 0", (job_id,)
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE files SET deleted = 1, deleted_at = ? WHERE job_id = ?", (when, job_id)
            )
        return _record(row)

    def references(self, sha256: str) -> int:
        """How many live (not deleted) records use the blob of ``sha256``."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT COUNT(*) FROM files WHERE sha256 = ? AND deleted = 0", (sha256,)
            ).fetchone()
        return int(row[0])

    def live_hashes(self) -> set[str]:
        """The ``sha256`` of every live record (the blobs that must be kept)."""
        with self._connect() as conn:
            rows = conn.execute("SELECT DISTINCT sha256 FROM files WHERE deleted = 0").fetchall()
        return {str(row[0]) for row in rows}
