"""The storage service's database: SQLite (the default) or PostgreSQL, one set of queries.

The URL chooses the engine: ``sqlite:///<file>`` (driver ``aiosqlite``) for one
process, ``postgresql://user:password@host:port/name`` (driver ``asyncpg``) for several
processes sharing the metadata. Queries are SQLAlchemy Core (:mod:`signaling.db_schema`);
the schema is kept by Alembic migrations (``signaling/migrations``), run at startup by
:meth:`Database.migrate` on the open connection.

Transactions (:meth:`Database.write`, :meth:`Database.read`):

* SQLite: a write is one ``BEGIN IMMEDIATE`` transaction, so writers (of this process
  and of others on the same file) are serialised and a check-then-insert (a quota) is
  atomic; a read is a deferred ``BEGIN`` that takes no write lock and writes nothing,
  so reads keep working on a full disk. The file is in WAL mode and
  :meth:`Database.hold_open` keeps one idle connection so the ``-wal`` file stays (see
  :mod:`signaling.sqlite_file` and ``disk_space``).
* PostgreSQL: ``READ COMMITTED``; what must not race takes a lock in the transaction:
  ``SELECT ... FOR UPDATE`` on the row it changes, or :meth:`Database.lock_owner`
  (a transaction-scoped advisory lock per principal) before counting its quota.
  Migrations take an advisory lock, so instances starting at once migrate one by one.

Source: https://docs.sqlalchemy.org/en/20/dialects/sqlite.html (serializable
isolation / savepoints, the ``begin`` event recipe), https://www.postgresql.org/docs/15/
explicit-locking.html#ADVISORY-LOCKS, https://alembic.sqlalchemy.org/en/latest/cookbook.html
(programmatic API on an existing connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import weakref
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, exc, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from signaling.sqlite_file import BUSY_TIMEOUT_S
from signaling.sqlite_file import is_disk_full as _sqlite_disk_full

__all__ = [
    "DATABASE_ERRORS",
    "MIGRATIONS_DIR",
    "SETUP_ERRORS",
    "STORAGE_ERRORS",
    "Database",
    "StoreLock",
    "StoreLockTimeoutError",
    "async_url",
    "file_url",
    "is_disk_full",
    "is_unique_violation",
    "public_url",
]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
"""The Alembic script folder (``env.py``, ``versions/``)."""

MIGRATE_LOCK = 0x7274_C013
"""PostgreSQL advisory lock key held while migrating (one instance at a time)."""

OWNER_LOCK_SPACE = 0x7274
"""First key of the per-principal advisory locks (:meth:`Database.lock_owner`)."""

BLOB_LOCK = 0x7274_B10B
"""PostgreSQL advisory lock key of changes touching both blobs and records."""

STORE_LOCK_TIMEOUT_S = 30.0
"""Longest wait for the store lock, seconds (:meth:`Database.exclusive`)."""

LOCK_NOT_AVAILABLE = "55P03"
"""PostgreSQL's SQLSTATE of a lock wait past ``lock_timeout``."""

UPLOAD_LOCK_SPACE = 0x7275
"""First key of the per-upload advisory locks (:meth:`Database.upload_lock`)."""

UPLOAD_LOCK_CONNECTIONS = 64
"""Most connections holding upload locks at once, per instance (a pool of their own,
so requests holding one never starve the queries they make)."""

DATABASE_ERRORS = (exc.SQLAlchemyError, sqlite3.Error)
"""What a database call may raise (SQLAlchemy wraps the driver's errors)."""

STORAGE_ERRORS = (OSError, exc.SQLAlchemyError, sqlite3.Error)
"""What the disk or the database may raise."""

SETUP_ERRORS = (OSError, ValueError, exc.SQLAlchemyError, sqlite3.Error)
"""What opening the database may raise (also a malformed URL: ``ValueError``)."""


class StoreLockTimeoutError(Exception):
    """The store lock could not be had in time (another instance holds it); try again.

    Attributes:
        timeout_s: how long it was waited for, seconds.
    """

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"the storage lock was busy for {timeout_s:g} s; try again")
        self.timeout_s = timeout_s


def _sqlstate(error: exc.DBAPIError) -> str | None:
    """The SQLSTATE of a PostgreSQL error (asyncpg's, through SQLAlchemy's adapter)."""
    for cause in (error.orig, getattr(error.orig, "__cause__", None)):
        state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        if isinstance(state, str):
            return state
    return None


_LIBPQ_ONLY = {"sslmode": "ssl", "connect_timeout": "timeout"}


def file_url(path: Path) -> str:
    """The URL of the SQLite file ``path`` (``sqlite:///`` + the path)."""
    return f"sqlite:///{path}"


def async_url(url: str | Path) -> URL:
    """The async driver URL of ``url``: ``sqlite`` -> ``sqlite+aiosqlite``,
    ``postgresql``/``postgres`` -> ``postgresql+asyncpg``; a :class:`~pathlib.Path` is a
    SQLite file. libpq's ``sslmode`` and ``connect_timeout`` become asyncpg's ``ssl``
    and ``timeout``.

    Raises:
        ValueError: not a SQLite or PostgreSQL URL, or a SQLite URL without a file.
    """
    parsed = make_url(file_url(url) if isinstance(url, Path) else url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ValueError("a sqlite database URL needs a file: sqlite:///path/to/file.db")
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        query = {_LIBPQ_ONLY.get(name, name): value for name, value in parsed.query.items()}
        return parsed.set(drivername="postgresql+asyncpg", query=query)
    raise ValueError(f"the database URL must start with sqlite:/// or postgresql://, not {backend}")


def public_url(url: URL) -> str:
    """``url`` with its password masked (for logs and errors)."""
    return url.render_as_string(hide_password=True)


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` means the disk is full (``SQLITE_FULL``, ``ENOSPC``, ``EDQUOT``,
    also wrapped by SQLAlchemy; PostgreSQL's ``disk_full`` SQLSTATE 53100)."""
    if isinstance(error, exc.DBAPIError) and error.orig is not None:
        if getattr(error.orig, "sqlstate", None) == "53100":
            return True
        return _sqlite_disk_full(error.orig)
    return _sqlite_disk_full(error)


def is_unique_violation(error: BaseException) -> bool:
    """Whether ``error`` is a unique or primary key violation (on either engine)."""
    return isinstance(error, exc.IntegrityError)


_MIGRATE_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _migrate_lock() -> asyncio.Lock:
    """One lock per event loop: Alembic's migration context is process-global."""
    loop = asyncio.get_running_loop()
    lock = _MIGRATE_LOCKS.get(loop)
    if lock is None:
        lock = _MIGRATE_LOCKS[loop] = asyncio.Lock()
    return lock


def alembic_config(url: URL) -> Config:
    """An Alembic configuration for ``url`` without an ini file."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation: a URL-encoded password holds "%"
    config.set_main_option("sqlalchemy.url", url.render_as_string(False).replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest migration's revision id."""
    head = ScriptDirectory.from_config(alembic_config(make_url("sqlite://"))).get_current_head()
    assert head is not None
    return head


class Database:
    """One storage database (see the module docstring); the engine opens on first use.

    Args:
        url: ``sqlite:///<file>``, ``postgresql://...``, or a SQLite file's path.

    Raises (every query):
        sqlalchemy.exc.SQLAlchemyError: the database cannot be reached, is locked for
            longer than :data:`~signaling.sqlite_file.BUSY_TIMEOUT_S`, or the disk is full.
    """

    def __init__(self, url: str | Path) -> None:
        self.url = async_url(url)
        self.is_postgresql = self.url.get_backend_name() == "postgresql"
        self.path: Path | None = None if self.is_postgresql else Path(str(self.url.database))
        self._engine: AsyncEngine | None = None
        self._writer: AsyncEngine | None = None
        self._locker: AsyncEngine | None = None
        self._anchor: AsyncConnection | None = None

    def __repr__(self) -> str:
        return f"Database({public_url(self.url)!r})"

    def _make_engine(self) -> AsyncEngine:
        if self.is_postgresql:
            return create_async_engine(self.url, pool_size=5, max_overflow=10, pool_pre_ping=True)
        engine = create_async_engine(self.url, connect_args={"timeout": BUSY_TIMEOUT_S})

        @event.listens_for(engine.sync_engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we send BEGIN ourselves (below)
            cursor = dbapi_conn.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            cursor.execute("PRAGMA journal_mode = WAL")  # persistent; a no-op once set
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: Connection) -> None:
            write = conn.get_execution_options().get("rtc_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    @property
    def engine(self) -> AsyncEngine:
        """The engine (created on first use; no connection is made until a query)."""
        if self._engine is None:
            self._engine = self._make_engine()
            self._writer = self._engine.execution_options(rtc_write=True)
        return self._engine

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A connection in one write transaction, committed on success and rolled back
        on error: ``async with db.write() as conn:``."""
        self.engine  # noqa: B018  (creates the writer)
        assert self._writer is not None
        async with self._writer.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection in one read transaction (SQLite: no write lock, no write)."""
        async with self.engine.begin() as conn:
            yield conn

    async def lock_owner(self, conn: AsyncConnection, owner: str) -> None:
        """Serialise the transactions of ``conn``'s kind for ``owner`` until it ends
        (PostgreSQL: ``pg_advisory_xact_lock(space, crc32(owner))``; SQLite: a write
        transaction is already exclusive)."""
        if self.is_postgresql:
            key = zlib.crc32(owner.encode()) - 2**31  # int4
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:space, :key)"),
                {"space": OWNER_LOCK_SPACE, "key": key},
            )

    @asynccontextmanager
    async def exclusive(self, timeout_s: float | None = None) -> AsyncIterator[None]:
        """Hold the cross-instance store lock (PostgreSQL: a session advisory lock on a
        connection of its own; SQLite: nothing, one process owns the file).

        The wait is bounded by PostgreSQL's ``lock_timeout`` (``timeout_s`` seconds,
        :data:`STORE_LOCK_TIMEOUT_S` when ``None``);
        hold it only for record changes, never for blob copies. A connection whose
        unlock fails or is cancelled is invalidated (its session ends, and the lock
        with it), so a lock is never left on a pooled connection.

        Raises:
            StoreLockTimeoutError: another instance held it for ``timeout_s``.
            sqlalchemy.exc.SQLAlchemyError: PostgreSQL cannot be reached.
        """
        if not self.is_postgresql:
            yield
            return
        if timeout_s is None:
            timeout_s = STORE_LOCK_TIMEOUT_S
        async with self.engine.connect() as conn:
            try:
                await conn.execute(
                    text("SELECT set_config('lock_timeout', :ms, true)"),
                    {"ms": f"{max(1, int(timeout_s * 1000))}ms"},
                )
                await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": BLOB_LOCK})
                await conn.commit()
            except exc.DBAPIError as error:
                await conn.rollback()
                if _sqlstate(error) == LOCK_NOT_AVAILABLE:
                    raise StoreLockTimeoutError(timeout_s) from None
                raise
            except BaseException:  # cancelled while waiting: the lock may have been taken
                await conn.invalidate()
                raise
            try:
                yield
            finally:
                try:
                    await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": BLOB_LOCK})
                    await conn.commit()
                except BaseException:
                    await conn.invalidate()  # the session ends: its locks go with it
                    raise

    @asynccontextmanager
    async def upload_lock(self, upload_id: str) -> AsyncIterator[bool]:
        """Try to hold the cross-instance lock of one upload for the block; yields
        whether it is held (``False``: another instance holds it, nothing waits).
        PostgreSQL: ``pg_try_advisory_lock(UPLOAD_LOCK_SPACE, crc32(upload_id))`` on a
        connection of a pool of its own (:data:`UPLOAD_LOCK_CONNECTIONS`), unlocked
        after (a connection that fails to unlock is dropped, which releases it);
        SQLite: always held (one process owns the file).

        Raises:
            sqlalchemy.exc.SQLAlchemyError: PostgreSQL cannot be reached, or every lock
                connection is in use for 10 s.
        """
        if not self.is_postgresql:
            yield True
            return
        if self._locker is None:
            self._locker = create_async_engine(
                self.url,
                pool_size=4,
                max_overflow=UPLOAD_LOCK_CONNECTIONS - 4,
                pool_timeout=10,
                pool_pre_ping=True,
            )
        key = {"space": UPLOAD_LOCK_SPACE, "key": zlib.crc32(upload_id.encode()) - 2**31}
        async with self._locker.connect() as conn:
            taken = text("SELECT pg_try_advisory_lock(:space, :key)")
            held = bool((await conn.execute(taken, key)).scalar())
            await conn.commit()
            try:
                yield held
            finally:
                if held:
                    try:
                        await conn.execute(text("SELECT pg_advisory_unlock(:space, :key)"), key)
                        await conn.commit()
                    except BaseException:
                        await conn.invalidate()  # the session ends: its locks go with it
                        raise

    async def hold_open(self) -> None:
        """SQLite: create the folder, switch the file to WAL mode and keep one idle
        connection open for the server's lifetime. Idempotent; nothing on PostgreSQL."""
        if self._anchor is not None or self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        anchor = await self.engine.connect()  # the connect event sets WAL mode
        try:
            await anchor.exec_driver_sql("SELECT count(*) FROM sqlite_master")
            await anchor.rollback()  # idle, outside any transaction: checkpoints may run
        except BaseException:
            await anchor.close()
            raise
        self._anchor = anchor

    async def migrate(self) -> str | None:
        """Bring the schema to the newest migration; return the revision before (``None``
        for a database without Alembic's table: new, or made by an earlier version).

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the database failed or is newer than this
                code (an unknown revision: ``alembic.util.CommandError``).
        """
        await self.hold_open()
        config = alembic_config(self.url)

        def upgrade(sync_conn: Connection) -> str | None:
            before = MigrationContext.configure(sync_conn).get_current_revision()
            config.attributes["connection"] = sync_conn
            command.upgrade(config, "head")
            return before

        async with _migrate_lock(), self.write() as conn:
            if self.is_postgresql:
                await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATE_LOCK})
            return await conn.run_sync(upgrade)

    async def current(self) -> str | None:
        """The Alembic revision of the database (``None`` before the first migration)."""
        async with self.read() as conn:
            return await conn.run_sync(
                lambda sync_conn: MigrationContext.configure(sync_conn).get_current_revision()
            )

    async def close(self) -> None:
        """Close the idle connection and every pooled one (server shutdown). Idempotent."""
        anchor, self._anchor = self._anchor, None
        if anchor is not None:
            await anchor.close()
        engine, self._engine, self._writer = self._engine, None, None
        if engine is not None:
            await engine.dispose()
        locker, self._locker = self._locker, None
        if locker is not None:
            await locker.dispose()


class StoreLock:
    """The lock of changes touching both blobs and records: an :class:`asyncio.Lock`
    for this process and, on PostgreSQL, a session advisory lock for every instance
    sharing the database (:meth:`~signaling.db_engine.Database.exclusive`).

    Use as ``async with store.lock:``.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._local = asyncio.Lock()
        self._held: contextlib.AbstractAsyncContextManager[None] | None = None

    async def __aenter__(self) -> None:
        await self._local.acquire()
        try:
            held = self._db.exclusive()
            await held.__aenter__()
        except BaseException:
            self._local.release()
            raise
        self._held = held

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        held, self._held = self._held, None
        try:
            if held is not None:
                await held.__aexit__(kind, error, trace)
        finally:
            self._local.release()
