"""``rtc-signaling keys``: the operator's commands for the storage service's API keys.

::

    rtc-signaling keys add --role worker|client|admin --name N [--principal FINGERPRINT]
    rtc-signaling keys list
    rtc-signaling keys revoke KEY_ID_OR_NAME

Each works on the database of the storage folder (``--storage-path`` or
``STORAGE_PATH``; ``--database-path`` and ``--database-url`` as for the server) and may
run while the server runs. ``add`` prints the new key alone on stdout, once (only its
hash is stored), and what it is on stderr; a client key must be bound to the client's
fingerprint (``rtc-client id``), a worker key may be bound to the worker's. ``list``
prints one line per key (never the key). ``revoke`` revokes the key with that id, or
every valid key with that name; the next request with it gets 401 KEY_REVOKED.

Exit codes: 0 done, 1 nothing matched (``revoke``) or the database failed, 2 usage or
invalid settings.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import CliPositionalArg, CliSubCommand, SettingsConfigDict, SettingsError

from rtc_worker.settings_sources import FLAG_ONLY, CommandLine, Commands, Env, EnvSettings
from signaling.api_common import now_timestamp
from signaling.db import StorageDB
from signaling.db_engine import SETUP_ERRORS
from signaling.keys import Role

__all__ = ["KeyStore", "KeysAdd", "KeysCli", "KeysList", "KeysRevoke", "keys_main"]


class KeyStore(EnvSettings):
    """Where the storage service's database is (the same settings as the server's)."""

    model_config = SettingsConfigDict(
        env_prefix="RTC_SIGNALING_", populate_by_name=True, extra="ignore"
    )

    storage_path: Annotated[Path | None, Env("RTC_SIGNALING_STORAGE_PATH", "STORAGE_PATH")] = Field(
        None, description="Folder of the result store (its database is storage.db in it)."
    )
    database_path: Annotated[Path | None, Env("RTC_SIGNALING_DATABASE_PATH", "DATABASE_PATH")] = (
        Field(None, description="SQLite file of the store, when not storage.db in the folder.")
    )

    database_url: Annotated[SecretStr | None, Env("RTC_DATABASE_URL")] = Field(
        None,
        description="Database URL of the store (sqlite:///FILE or postgresql://...); "
        "overrides the paths.",
    )

    @field_validator("storage_path", "database_path", "database_url", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value: object) -> object:
        return None if value == "" else value

    def url(self) -> str | None:
        """The store's database URL, or ``None`` when neither a URL nor a path is set."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        path = self.database_path
        if path is None and self.storage_path is not None:
            path = self.storage_path / "storage.db"
        return None if path is None else f"sqlite:///{path}"

    async def database(self) -> StorageDB | None:
        """The store's database (migrated), or ``None`` when no URL or path is set."""
        url = self.url()
        if url is None:
            return None
        db = StorageDB(url)
        try:
            await db.migrate()
        except BaseException:
            await db.close()
            raise
        return db


class KeysAdd(KeyStore):
    """Make a key and print it once (stdout); only its hash is stored."""

    role: Annotated[Literal["worker", "client", "admin"], FLAG_ONLY] = Field(
        description="What the key may do: worker, client or admin."
    )
    name: Annotated[str, FLAG_ONLY] = Field(
        description="A label for the key: [A-Za-z0-9][A-Za-z0-9._-]{0,63}."
    )
    principal: Annotated[str | None, FLAG_ONLY] = Field(
        None,
        description="The fingerprint the key acts as: required for a client key, optional "
        "for a worker key, not for an admin key.",
    )


class KeysList(KeyStore):
    """List the keys (never the keys themselves): id, role, name, principal, dates."""


class KeysRevoke(KeyStore):
    """Revoke the key with this id, or every valid key with this name."""

    key: Annotated[CliPositionalArg[str], FLAG_ONLY] = Field(description="A key id or a key name.")


class KeysCli(Commands):
    """API keys of the storage service (worker, client and admin keys)."""

    add: CliSubCommand[KeysAdd] = Field(description="Make a key and print it once.")
    list: CliSubCommand[KeysList] = Field(description="List the keys.")
    revoke: CliSubCommand[KeysRevoke] = Field(description="Revoke a key.")


async def _run(command: KeyStore, db: StorageDB) -> int:
    if isinstance(command, KeysAdd):
        try:
            row, key = await db.add_key(Role(command.role), command.name, command.principal)
        except ValueError as exc:
            print(f"rtc-signaling keys add: {exc}", file=sys.stderr)
            return 2
        print(key, flush=True)
        print(
            f"{row.role.value} key {row.name!r} (id {row.key_id}, principal {row.principal}): "
            "shown once, store it now",
            file=sys.stderr,
        )
        return 0
    if isinstance(command, KeysRevoke):
        revoked = await db.revoke_key(command.key, now_timestamp())
        for row in revoked:
            print(f"revoked {row.key_id} ({row.role.value} {row.name!r})")
        if not revoked:
            print(f"rtc-signaling keys revoke: no valid key {command.key!r}", file=sys.stderr)
        return 0 if revoked else 1
    for row in await db.list_keys():
        state = f"revoked {row.revoked_at}" if row.revoked_at else "valid"
        print(
            f"{row.key_id}  {row.role.value:<6}  {row.name:<20}  {row.principal}  "
            f"{row.created_at}  {state}"
        )
    return 0


def keys_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rtc-signaling keys``; returns the exit status (see the module)."""
    line = CommandLine(KeysCli, "rtc-signaling keys")
    try:
        parsed = line.parse(argv)
    except (ValidationError, SettingsError) as exc:
        print(f"rtc-signaling keys: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    command = line.command(parsed)
    if not isinstance(command, KeyStore):
        raise TypeError(f"rtc-signaling keys has no command {command!r}")
    if command.url() is None:
        print("rtc-signaling keys: give --storage-path (or STORAGE_PATH)", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_main(command))
    except SETUP_ERRORS as exc:
        print(f"rtc-signaling keys: the database failed: {exc}", file=sys.stderr)
        return 1


async def _main(command: KeyStore) -> int:
    db = await command.database()
    assert db is not None
    try:
        return await _run(command, db)
    finally:
        await db.close()
