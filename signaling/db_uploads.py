"""The ``uploads`` table of the storage service: one row per resumable upload.

Each upload belongs to the principal whose key created it (``owner``); the quota of
open uploads per owner is checked in the same transaction that inserts a new one
(:meth:`UploadQueries.create_upload_within`), so two concurrent requests cannot both
squeeze under it. See :mod:`signaling.uploads_api` for the routes.
"""

from __future__ import annotations

import dataclasses
import enum
import sqlite3
from dataclasses import dataclass
from typing import Any

from signaling.sqlite_file import SQLiteFile

__all__ = ["LEGACY_OWNER", "QuotaRefusal", "UploadQueries", "UploadRecord"]

LEGACY_OWNER = ":legacy"
"""Owner of rows written before records had owners (no key can act as it; admin only)."""

_UNFINISHED_SQL = "('initiated', 'in_progress')"

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
)
_UPLOAD_COLUMNS = ", ".join(_UPLOAD_FIELDS)


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
            owner=str(row[16]),
        )


def _insert(conn: sqlite3.Connection, record: UploadRecord) -> None:
    conn.execute(
        f"INSERT INTO uploads ({_UPLOAD_COLUMNS}) VALUES ({', '.join('?' * len(_UPLOAD_FIELDS))})",
        record.row(),
    )


class UploadQueries(SQLiteFile):
    """The queries of ``uploads`` (blocking; see :class:`~signaling.db.StorageDB`)."""

    def create_upload(self, record: UploadRecord) -> None:
        """Insert a new upload.

        Raises:
            sqlite3.IntegrityError: the ``upload_id`` exists already.
        """
        with self.write() as conn:
            _insert(conn, record)

    def create_upload_within(
        self, record: UploadRecord, cutoff: str, max_count: int, max_bytes: int
    ) -> QuotaRefusal | None:
        """Insert ``record`` unless its owner's open uploads would pass the quota.

        Open uploads are the owner's unfinished ones changed at or after ``cutoff``
        (older ones are expired and about to be removed); the check and the insert are
        one transaction.

        Args:
            record: the new upload.
            cutoff: ISO 8601 UTC time before which an unfinished upload has expired.
            max_count: most open uploads per owner.
            max_bytes: most announced bytes of open uploads per owner.

        Returns:
            ``None`` when inserted, else why not (nothing was written).
        """
        with self.write() as conn:
            count, total = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(total_size), 0) FROM uploads WHERE owner = ?"
                f" AND status IN {_UNFINISHED_SQL} AND updated_at >= ?",
                (record.owner, cutoff),
            ).fetchone()
            if int(count) >= max_count:
                return QuotaRefusal.COUNT
            if int(total) + record.total_size > max_bytes:
                return QuotaRefusal.BYTES
            _insert(conn, record)
        return None

    def open_upload_bytes(self, cutoff: str) -> int:
        """Announced bytes of every unfinished upload changed at or after ``cutoff``."""
        with self.read() as conn:
            row = conn.execute(
                f"SELECT COALESCE(SUM(total_size), 0) FROM uploads WHERE status IN "
                f"{_UNFINISHED_SQL} AND updated_at >= ?",
                (cutoff,),
            ).fetchone()
        return int(row[0])

    def get_upload(self, upload_id: str) -> UploadRecord | None:
        """The upload ``upload_id``, or ``None`` when unknown."""
        with self.read() as conn:
            row = conn.execute(
                f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE upload_id = ?", (upload_id,)
            ).fetchone()
        return None if row is None else UploadRecord.from_row(row)

    def all_uploads(self) -> list[UploadRecord]:
        """Every upload, oldest first."""
        with self.read() as conn:
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
        with self.write() as conn:
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
        with self.read() as conn:
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
        with self.write() as conn:
            cursor = conn.execute(
                "UPDATE uploads SET status = 'completed', key = ?, sha256 = ?, file_path = ?,"
                " mime_type = ?, updated_at = ? WHERE upload_id = ?"
                f" AND status IN {_UNFINISHED_SQL}",
                (key, sha256, file_path, mime_type, when, upload_id),
            )
        return cursor.rowcount == 1

    def stale_uploads(self, cutoff: str) -> list[UploadRecord]:
        """Unfinished or cancelled uploads last changed before ``cutoff``."""
        with self.read() as conn:
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
        with self.write() as conn:
            cursor = conn.execute(
                "DELETE FROM uploads WHERE upload_id = ? AND status IN "
                "('initiated', 'in_progress', 'cancelled') AND updated_at < ?",
                (upload_id, cutoff),
            )
        return cursor.rowcount == 1

    def upload_ids(self) -> set[str]:
        """The id of every upload."""
        with self.read() as conn:
            rows = conn.execute("SELECT upload_id FROM uploads").fetchall()
        return {str(row[0]) for row in rows}

    def set_upload_times(self, upload_id: str, created_at: str, updated_at: str) -> None:
        """Overwrite the timestamps of ``upload_id`` (maintenance and tests)."""
        with self.write() as conn:
            conn.execute(
                "UPDATE uploads SET created_at = ?, updated_at = ? WHERE upload_id = ?",
                (created_at, updated_at, upload_id),
            )
