"""The SQLite records of the result store (standard library ``sqlite3``).

One row per ``job_id`` in ``files``, one per resumable upload in ``uploads`` (schema
version 2, :mod:`signaling.uploads_api`; an upload's chunks are recorded with its
partial file). The content lives in a content-addressed blob store
(:mod:`signaling.results_api`); ``file_path`` is the blob's path relative to the storage
folder, so jobs with the same content share one blob. References are counted by query
(live rows with the blob's ``sha256``; a completed, not deleted upload counts too).

Every method of :class:`StorageDB` is blocking and opens its own connection (WAL mode,
so readers do not wait for a writer); the async server calls them through
``asyncio.to_thread``. The schema version is kept in ``PRAGMA user_version`` and
migrations run in :meth:`StorageDB.migrate`.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA_VERSION", "FileRecord", "StorageDB", "UploadRecord"]

SCHEMA_VERSION = 2
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
)
_UPLOAD_COLUMNS = ", ".join(_UPLOAD_FIELDS)


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class UploadRecord:
    """One row of ``uploads``: a resumable chunked upload.

    Attributes:
        upload_id: 32 lowercase hex digits.
        file_name: the base name given by the uploader.
        total_size: announced length in bytes.
        user_id: owner (``[A-Za-z0-9._-]{1,64}``).
        user_role: owner's role (same grammar).
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

    @property
    def total_chunks(self) -> int:
        """How many chunks make the file (0 for an empty file)."""
        return -(-self.total_size // self.chunk_size)

    def chunk_length(self, index: int) -> int:
        """The exact length in bytes of chunk ``index`` (``0 <= index < total_chunks``)."""
        return min(self.chunk_size, self.total_size - index * self.chunk_size)

    def row(self) -> tuple[Any, ...]:
        """The values in column order, for SQL (``deleted`` as 0 or 1)."""
        return tuple(int(v) if isinstance(v, bool) else v for v in dataclasses.astuple(self))

    @classmethod
    def from_row(cls, row: sqlite3.Row | tuple[Any, ...]) -> UploadRecord:
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
        """How many live records (files and completed uploads) use the blob of ``sha256``."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT (SELECT COUNT(*) FROM files WHERE sha256 = ? AND deleted = 0)"
                " + (SELECT COUNT(*) FROM uploads WHERE sha256 = ? AND deleted = 0"
                " AND status = 'completed')",
                (sha256, sha256),
            ).fetchone()
        return int(row[0])

    def live_hashes(self) -> set[str]:
        """The ``sha256`` of every live record and completed upload (blobs to keep)."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT sha256 FROM files WHERE deleted = 0 UNION SELECT sha256 FROM uploads"
                " WHERE deleted = 0 AND status = 'completed' AND sha256 IS NOT NULL"
            ).fetchall()
        return {str(row[0]) for row in rows}

    def purge_deleted_files(self, cutoff: str) -> list[FileRecord]:
        """Remove the rows of ``files`` deleted before ``cutoff``; return them."""
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM files WHERE deleted = 1 AND deleted_at < ?", (cutoff,)
            ).fetchall()
            conn.execute("DELETE FROM files WHERE deleted = 1 AND deleted_at < ?", (cutoff,))
        return [_record(row) for row in rows]

    # ------------------------------------------------------------------ uploads

    def create_upload(self, record: UploadRecord) -> None:
        """Insert a new upload.

        Raises:
            sqlite3.IntegrityError: the ``upload_id`` exists already.
        """
        with self._connect() as conn:
            conn.execute(
                f"INSERT INTO uploads ({_UPLOAD_COLUMNS}) VALUES "
                f"({', '.join('?' * len(_UPLOAD_FIELDS))})",
                record.row(),
            )

    def get_upload(self, upload_id: str) -> UploadRecord | None:
        """The upload ``upload_id``, or ``None`` when unknown."""
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE upload_id = ?", (upload_id,)
            ).fetchone()
        return None if row is None else UploadRecord.from_row(row)

    def all_uploads(self) -> list[UploadRecord]:
        """Every upload, oldest first."""
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT {_UPLOAD_COLUMNS} FROM uploads ORDER BY created_at, upload_id"
            ).fetchall()
        return [UploadRecord.from_row(row) for row in rows]

    def set_upload_status(
        self, upload_id: str, status: str, when: str, only_from: tuple[str, ...]
    ) -> str | None:
        """Set the status of ``upload_id`` to ``status`` if it is one of ``only_from``.

        Returns:
            The status before the call (unchanged when not in ``only_from``), or
            ``None`` when the upload is unknown.
        """
        with self._connect() as conn:
            row = conn.execute(
                "SELECT status FROM uploads WHERE upload_id = ?", (upload_id,)
            ).fetchone()
            if row is None:
                return None
            before = str(row[0])
            if before in only_from:
                conn.execute(
                    "UPDATE uploads SET status = ?, updated_at = ? WHERE upload_id = ?",
                    (status, when, upload_id),
                )
        return before

    def key_taken(self, key: str) -> bool:
        """Whether an upload already holds ``key``."""
        with self._connect() as conn:
            row = conn.execute("SELECT 1 FROM uploads WHERE key = ?", (key,)).fetchone()
        return row is not None

    def complete_upload(
        self, upload_id: str, key: str, sha256: str, file_path: str, mime_type: str, when: str
    ) -> bool:
        """Mark an unfinished upload completed with its key and blob.

        Returns:
            ``False`` when the upload is unknown or not unfinished (nothing changed).

        Raises:
            sqlite3.IntegrityError: ``key`` is taken.
        """
        with self._connect() as conn:
            cursor = conn.execute(
                "UPDATE uploads SET status = 'completed', key = ?, sha256 = ?, file_path = ?,"
                " mime_type = ?, updated_at = ? WHERE upload_id = ?"
                " AND status IN ('initiated', 'in_progress')",
                (key, sha256, file_path, mime_type, when, upload_id),
            )
        return cursor.rowcount == 1

    def stale_uploads(self, cutoff: str) -> list[UploadRecord]:
        """Unfinished or cancelled uploads last changed before ``cutoff``."""
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE status IN "
                "('initiated', 'in_progress', 'cancelled') AND updated_at < ?",
                (cutoff,),
            ).fetchall()
        return [UploadRecord.from_row(row) for row in rows]

    def delete_upload(self, upload_id: str, cutoff: str) -> bool:
        """Remove the row of an unfinished or cancelled upload last changed before ``cutoff``.

        Returns:
            Whether a row was removed (an upload touched meanwhile is kept).
        """
        with self._connect() as conn:
            cursor = conn.execute(
                "DELETE FROM uploads WHERE upload_id = ? AND status IN "
                "('initiated', 'in_progress', 'cancelled') AND updated_at < ?",
                (upload_id, cutoff),
            )
        return cursor.rowcount == 1

    def upload_ids(self) -> set[str]:
        """The id of every upload."""
        with self._connect() as conn:
            rows = conn.execute("SELECT upload_id FROM uploads").fetchall()
        return {str(row[0]) for row in rows}

    def set_upload_times(self, upload_id: str, created_at: str, updated_at: str) -> None:
        """Overwrite the timestamps of ``upload_id`` (maintenance and tests)."""
        with self._connect() as conn:
            conn.execute(
                "UPDATE uploads SET created_at = ?, updated_at = ? WHERE upload_id = ?",
                (created_at, updated_at, upload_id),
            )
