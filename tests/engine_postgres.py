"""A throwaway PostgreSQL server for the tests: Debian's binaries, a temporary folder,
a free loopback port, no durability (``fsync=off``), started as a child process.

``postgres`` runs in the foreground as a child of the test process (not daemonised by
``pg_ctl``) that gets SIGINT (fast shutdown) when the test process dies, even by
SIGKILL (``PR_SET_PDEATHSIG``), so a killed test run leaves no server behind. Root runs
it as the ``postgres`` user (``Popen(user=...)``): PostgreSQL refuses to run as root.
Each test gets a database of its own when it needs an empty one
(:meth:`PostgresServer.new_database`; ``CREATE DATABASE`` takes 0.2-0.4 s here), else
the shared database emptied for it (:meth:`PostgresServer.emptied_database`, one
``TRUNCATE``); the server starts once per test session (about one second).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PostgresServer", "PostgresUnavailable", "postgres_server"]

_POSTGRES_ROOT = Path("/usr/lib/postgresql")


_EMPTY_TABLES = """
DO $$ DECLARE name text; BEGIN
  FOR name IN SELECT tablename FROM pg_tables
      WHERE schemaname = 'public' AND tablename <> 'alembic_version' LOOP
    EXECUTE format('TRUNCATE %I CASCADE', name);
  END LOOP;
END $$;
"""


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot run here; the message says why (a test skips with it)."""


def _bindir() -> Path:
    found = sorted(
        (path.parent for path in _POSTGRES_ROOT.glob("*/bin/postgres")),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    if not found:
        raise PostgresUnavailable(
            f"no PostgreSQL server under {_POSTGRES_ROOT} (apt-get install postgresql)"
        )
    return found[-1]


def _die_with_parent() -> None:
    """In the child before ``exec``: SIGINT when the parent dies (Linux ``prctl``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    """A running server: its port, its admin URL, and fresh databases on demand."""

    port: int
    folder: Path
    _names: Iterator[int] = field(default_factory=itertools.count)
    _shared: bool = False

    def url(self, database: str = "postgres") -> str:
        """The ``postgresql://`` URL of ``database`` (user ``postgres``, no password)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database; its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def emptied_database(self) -> str:
        """The session's shared database with every table emptied (the schema and its
        migration revision kept); its URL."""
        if not self._shared:
            self.psql("CREATE DATABASE shared")
            self._shared = True
        self.psql(_EMPTY_TABLES, "shared")
        return self.url("shared")

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` with ``psql``; its output (unaligned, tuples only)."""
        done = subprocess.run(
            [
                *(str(_bindir() / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"),
                *("-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database),
                *("-c", sql),
            ],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a server, yield it, stop it and remove its folder (also on failure).

    Raises:
        PostgresUnavailable: no binaries, no ``postgres`` user, or it did not start.
    """
    bindir = _bindir()
    as_postgres: dict[str, Any] = {}
    folder = Path(tempfile.mkdtemp(prefix="rtc-pg-"))
    data, sockets = folder / "data", folder / "sock"
    sockets.mkdir()
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(folder, ignore_errors=True)
            raise PostgresUnavailable("no postgres user to run the server as") from None
        for path in (folder, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
        as_postgres = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    env = {**os.environ, "LC_ALL": "C.UTF-8", "TZ": "UTC"}
    process: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            [
                *(str(bindir / "initdb"), "-D", str(data), "-U", "postgres"),
                *("-A", "trust", "-E", "UTF8", "--no-sync", "--locale=C"),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            cwd=folder,
            **as_postgres,
        )
        port = _free_port()
        log = (folder / "postgres.log").open("wb")
        process = subprocess.Popen(
            [
                *(str(bindir / "postgres"), "-D", str(data), "-p", str(port)),
                *("-k", str(sockets), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"),
                *("-c", "synchronous_commit=off", "-c", "full_page_writes=off"),
                *("-c", "max_connections=200"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=folder,
            preexec_fn=_die_with_parent,  # the session fixture starts it before any thread
            **as_postgres,
        )
        log.close()
        server = PostgresServer(port, folder)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(RuntimeError):
                server.psql("SELECT 1")
                break
            if process.poll() is not None or time.monotonic() > deadline:
                text = (folder / "postgres.log").read_text(errors="replace")
                raise PostgresUnavailable(f"postgres did not start: {text[-2000:]}")
            time.sleep(0.05)
        yield server
    except subprocess.CalledProcessError as exc:
        raise PostgresUnavailable(f"initdb failed: {exc.stderr.decode(errors='replace')}") from exc
    finally:
        if process is not None:
            process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(folder, ignore_errors=True)
