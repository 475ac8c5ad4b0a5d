"""One SQLite file (the peer-id bindings): transactions, and what a full disk does to it.

The storage service's records go through :mod:`signaling.db_engine` (SQLAlchemy, SQLite
or PostgreSQL) with the same transactions and WAL handling; it uses
:func:`is_disk_full` and :data:`BUSY_TIMEOUT_S` from here.

Every query opens its own connection (the server calls them through
``asyncio.to_thread``, from any thread): :meth:`SQLiteFile.write` runs one
``BEGIN IMMEDIATE`` transaction (committed on success, rolled back on error) and
:meth:`SQLiteFile.read` one deferred transaction, which takes no write lock and writes
nothing, so reads keep working on a full disk.

The file is in WAL mode. SQLite removes the ``-wal`` file when its last connection
closes and creates it (and the ``-shm`` index) again on the next one, which needs disk
space; :meth:`SQLiteFile.hold_open` keeps one idle connection for the server's
lifetime, so both stay in place, and a write after a checkpoint reuses the space the
``-wal`` file already has.

A write that does not fit raises ``sqlite3.OperationalError`` with the extended error
code ``SQLITE_FULL``; :func:`is_disk_full` tells it apart (also for ``ENOSPC`` and
``EDQUOT`` raised as ``OSError``).

Source: https://www.sqlite.org/wal.html (persistence of the WAL file, checkpoints),
https://www.sqlite.org/rescode.html#full.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rtc_worker.storage import DISK_FULL_ERRNOS

__all__ = ["BUSY_TIMEOUT_S", "SQLITE_FULL", "SQLiteFile", "is_disk_full"]

BUSY_TIMEOUT_S = 30.0
"""How long a query waits for another writer's lock, in seconds."""

SQLITE_FULL = 13
"""SQLite's primary result code for "database or disk is full"."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` means the disk (or the user's disk quota) is full.

    True for ``sqlite3.Error`` with the ``SQLITE_FULL`` code and for ``OSError`` with
    ``ENOSPC`` or ``EDQUOT``.
    """
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and code & 0xFF == SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


class SQLiteFile:
    """Blocking access to one SQLite file; one connection per call.

    Args:
        path: the database file (its folder is created by :meth:`hold_open`).

    Raises (every method):
        sqlite3.Error: the database cannot be opened, is locked for longer than
            :data:`BUSY_TIMEOUT_S`, is corrupt, or the disk is full.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._anchor: sqlite3.Connection | None = None
        self._anchor_lock = threading.Lock()

    def _open(self) -> sqlite3.Connection:
        return sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        conn = self._open()
        try:
            conn.execute(begin)
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A connection in one write transaction (``BEGIN IMMEDIATE``), committed on
        success and rolled back on error; use as ``with db.write() as conn:``."""
        with self._transaction("BEGIN IMMEDIATE") as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A connection in one read transaction (deferred: no write lock, no write)."""
        with self._transaction("BEGIN") as conn:
            yield conn

    def hold_open(self) -> None:
        """Switch the file to WAL mode and keep one idle connection open (see the module
        docstring); creates the folder. Idempotent."""
        with self._anchor_lock:
            if self._anchor is not None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._open()
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except BaseException:
                conn.close()
                raise
            self._anchor = conn

    def release(self) -> None:
        """Close the idle connection of :meth:`hold_open` (server shutdown). Idempotent."""
        with self._anchor_lock:
            anchor, self._anchor = self._anchor, None
        if anchor is not None:
            anchor.close()
