"""Peer-id bindings: which key owns which peer id, kept across restarts.

The first key that registers a peer id (proving possession, see
:mod:`protocol.signaling_proof`) is bound to it; from then on only that key may register
the id, after any restart of the server, until the operator releases the binding
(``rtc-signaling bindings release``). This is what stops a squatter who holds the
shared token from registering a worker's id while the worker waits out its backoff.

:class:`BindingStore` is the interface the server uses (async, so that a Redis-backed
store can stand beside this one); :class:`SqliteBindings` keeps the bindings in a SQLite
file (standard library ``sqlite3``, WAL mode, one connection per call, run in a thread).

Bounds: one key holds at most ``max_per_key`` bindings (binding one more releases that
key's least recently registered id, so a client that registers under a new random id
each run does not grow the table); a client's binding that has not been registered for
``client_ttl_s`` seconds is released. A worker's binding never expires.

Source: DESIGN.md ("Identity first"); PROTOCOL.md section 5.3.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from signaling.sqlite_file import SQLiteFile

__all__ = ["SCHEMA_VERSION", "Binding", "BindingStore", "SqliteBindings"]

SCHEMA_VERSION = 1
"""The schema version this module writes (``PRAGMA user_version``)."""

_SCHEMA = (
    """
    CREATE TABLE bindings (
        peer_id     TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        role        TEXT NOT NULL,
        created_at  REAL NOT NULL,
        last_seen   REAL NOT NULL
    )
    """,
    "CREATE INDEX bindings_key ON bindings (fingerprint, last_seen)",
    "CREATE INDEX bindings_seen ON bindings (role, last_seen)",
)
_COLUMNS = "peer_id, fingerprint, role, created_at, last_seen"


@dataclass(frozen=True, slots=True)
class Binding:
    """One peer id bound to one key.

    Attributes:
        peer_id: the bound id (``[A-Za-z0-9._-]{1,64}``).
        fingerprint: the key's fingerprint (64 hex digits).
        role: the role of the key's latest registration of the id (``worker``/``client``).
        created_at: when the id was bound, seconds since the epoch.
        last_seen: the key's latest registration of the id, seconds since the epoch.
    """

    peer_id: str
    fingerprint: str
    role: str
    created_at: float
    last_seen: float


class BindingStore(Protocol):
    """Where the server keeps its bindings (SQLite here; Redis for several processes).

    Every method may raise the store's own error (``sqlite3.Error`` for
    :class:`SqliteBindings`) when the store cannot be reached.
    """

    async def claim(self, peer_id: str, fingerprint: str, role: str) -> Binding:
        """Bind ``peer_id`` to ``fingerprint`` unless it is bound to another key.

        Returns:
            The binding of ``peer_id`` afterwards: the caller's (new, or the existing
            one with ``last_seen`` now) when ``binding.fingerprint == fingerprint``;
            another key's otherwise, and then nothing changed.
        """
        ...

    async def get(self, peer_id: str) -> Binding | None:
        """The binding of ``peer_id``, or None when it is free."""
        ...

    async def entries(self) -> list[Binding]:
        """Every binding, sorted by peer id."""
        ...

    async def release(self, peer_id: str) -> Binding | None:
        """Remove the binding of ``peer_id``; return it, or None when there was none."""
        ...


class SqliteBindings:
    """:class:`BindingStore` on a SQLite file (created, with its folder, on first use).

    Args:
        path: the database file; its folder is created with mode 0700.
        max_per_key: most peer ids one key holds (at least 1).
        client_ttl_s: a client binding not registered for this long is released,
            seconds; 0 never releases one.
        clock: seconds since the epoch (tests pass their own).

    Raises:
        sqlite3.Error: the file cannot be opened or created, or its schema is newer
            than :data:`SCHEMA_VERSION` (from the constructor and every method).
        OSError: the folder cannot be created.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_per_key: int = 1000,
        client_ttl_s: float = 0.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if max_per_key < 1:
            raise ValueError("max_per_key is at least 1")
        self.path = path
        self.max_per_key = max_per_key
        self.client_ttl_s = client_ttl_s
        self._clock = clock or time.time
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._db = SQLiteFile(path)
        self._migrate()

    # ------------------------------------------------------------------ async interface

    async def claim(self, peer_id: str, fingerprint: str, role: str) -> Binding:
        """See :meth:`BindingStore.claim`."""
        return await asyncio.to_thread(self.claim_now, peer_id, fingerprint, role)

    async def get(self, peer_id: str) -> Binding | None:
        """See :meth:`BindingStore.get`."""
        return await asyncio.to_thread(self.get_now, peer_id)

    async def entries(self) -> list[Binding]:
        """See :meth:`BindingStore.entries`."""
        return await asyncio.to_thread(self.entries_now)

    async def release(self, peer_id: str) -> Binding | None:
        """See :meth:`BindingStore.release`."""
        return await asyncio.to_thread(self.release_now, peer_id)

    # ------------------------------------------------------------------ blocking calls

    def claim_now(self, peer_id: str, fingerprint: str, role: str) -> Binding:
        """:meth:`claim`, blocking; one transaction, so two claims never both win."""
        now = self._clock()
        with self._db.write() as conn:
            self._expire(conn, now)
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM bindings WHERE peer_id = ?", (peer_id,)
            ).fetchone()
            if row is not None and row[1] != fingerprint:
                return _binding(row)
            if row is not None:
                conn.execute(
                    "UPDATE bindings SET last_seen = ?, role = ? WHERE peer_id = ?",
                    (now, role, peer_id),
                )
                return Binding(peer_id, fingerprint, role, float(row[3]), now)
            conn.execute(
                f"INSERT INTO bindings ({_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                (peer_id, fingerprint, role, now, now),
            )
            held = int(
                conn.execute(
                    "SELECT COUNT(*) FROM bindings WHERE fingerprint = ?", (fingerprint,)
                ).fetchone()[0]
            )
            if held > self.max_per_key:
                conn.execute(
                    "DELETE FROM bindings WHERE peer_id IN (SELECT peer_id FROM bindings "
                    "WHERE fingerprint = ? AND peer_id != ? ORDER BY last_seen, peer_id "
                    "LIMIT ?)",
                    (fingerprint, peer_id, held - self.max_per_key),
                )
            return Binding(peer_id, fingerprint, role, now, now)

    def get_now(self, peer_id: str) -> Binding | None:
        """:meth:`get`, blocking (an expired client binding counts as free)."""
        with self._db.write() as conn:
            self._expire(conn, self._clock())
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM bindings WHERE peer_id = ?", (peer_id,)
            ).fetchone()
        return None if row is None else _binding(row)

    def entries_now(self) -> list[Binding]:
        """:meth:`entries`, blocking."""
        with self._db.write() as conn:
            self._expire(conn, self._clock())
            rows = conn.execute(f"SELECT {_COLUMNS} FROM bindings ORDER BY peer_id").fetchall()
        return [_binding(row) for row in rows]

    def release_now(self, peer_id: str) -> Binding | None:
        """:meth:`release`, blocking."""
        with self._db.write() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM bindings WHERE peer_id = ?", (peer_id,)
            ).fetchone()
            conn.execute("DELETE FROM bindings WHERE peer_id = ?", (peer_id,))
        return None if row is None else _binding(row)

    # ------------------------------------------------------------------ internals

    def _expire(self, conn: sqlite3.Connection, now: float) -> None:
        if self.client_ttl_s > 0:
            conn.execute(
                "DELETE FROM bindings WHERE role = 'client' AND last_seen < ?",
                (now - self.client_ttl_s,),
            )

    def _migrate(self) -> None:
        self._db.hold_open()  # WAL mode; the -wal file stays in place
        with self._db.write() as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"{self.path} has schema version {version}; this server knows up to "
                    f"{SCHEMA_VERSION}"
                )
            if version < 1:
                for statement in _SCHEMA:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _binding(row: tuple[object, ...]) -> Binding:
    return Binding(
        peer_id=str(row[0]),
        fingerprint=str(row[1]),
        role=str(row[2]),
        created_at=float(str(row[3])),
        last_seen=float(str(row[4])),
    )
