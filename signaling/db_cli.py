"""``rtc-signaling db``: the storage service's database schema, for the operator.

    rtc-signaling db upgrade   # apply the pending migrations (the server also does at start)
    rtc-signaling db current   # print the revision and the newest one this code knows

The database is found as for the server and ``rtc-signaling keys``: ``--database-url``
(``RTC_DATABASE_URL``), else ``--database-path``, else ``storage.db`` in
``--storage-path``. Exit codes: 0 done (``current``: the schema is the newest), 1 the
database failed or ``current`` found an older schema, 2 usage or invalid settings.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from pydantic import Field, ValidationError
from pydantic_settings import CliSubCommand, SettingsError

from rtc_worker.settings_sources import CommandLine, Commands
from signaling.db_engine import SETUP_ERRORS, Database, head_revision, public_url
from signaling.keys_cli import KeyStore

__all__ = ["DbCli", "DbCurrent", "DbUpgrade", "db_main"]


class DbUpgrade(KeyStore):
    """Migrate the database to the newest schema (under the migration lock)."""


class DbCurrent(KeyStore):
    """Print the database's schema revision and the newest this code knows."""


class DbCli(Commands):
    """The storage service's database schema."""

    upgrade: CliSubCommand[DbUpgrade] = Field(description="Apply the pending migrations.")
    current: CliSubCommand[DbCurrent] = Field(description="Show the schema revision.")


async def _run(command: KeyStore, url: str) -> int:
    db = Database(url)
    try:
        head = head_revision()
        if isinstance(command, DbUpgrade):
            before = await db.migrate()
            print(f"{public_url(db.url)}: {before or 'none'} -> {head}")
            return 0
        current = await db.current()
        print(f"{public_url(db.url)}: {current or 'none'} (newest {head})")
        return 0 if current == head else 1
    finally:
        await db.close()


def db_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rtc-signaling db``; returns the exit status (see the module)."""
    line = CommandLine(DbCli, "rtc-signaling db")
    try:
        parsed = line.parse(argv)
    except (ValidationError, SettingsError) as exc:
        print(f"rtc-signaling db: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    command = line.command(parsed)
    if not isinstance(command, KeyStore):
        raise TypeError(f"rtc-signaling db has no command {command!r}")
    url = command.url()
    if url is None:
        print("rtc-signaling db: give --database-url or --storage-path", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(command, url))
    except SETUP_ERRORS as exc:
        print(f"rtc-signaling db: the database failed: {exc}", file=sys.stderr)
        return 1
