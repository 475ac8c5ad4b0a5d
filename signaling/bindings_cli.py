"""``rtc-signaling bindings``: the operator's view of which key owns which peer id.

::

    rtc-signaling bindings list [--json]            # every binding, sorted by peer id
    rtc-signaling bindings release PEER_ID          # the next key to register it owns it

The commands read the bindings file the server uses (``--data-dir`` / ``--bindings-db``,
the same flags and variables as ``rtc-signaling``); they work while the server runs
(SQLite, WAL mode). With ``--redis-url`` / ``RTC_REDIS_URL`` (and the server's key
prefix) they read the bindings every process shares in Redis instead. A released id
stays registered by whoever holds it now until that socket closes; the next
registration binds it again.

Exit codes: 0 done, 1 the peer id was not bound or the store cannot be read, 2 usage.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import CliPositionalArg, CliSubCommand, SettingsConfigDict
from pydantic_settings import SettingsError as CliSettingsError

from protocol.signaling import PEER_ID_PATTERN
from rtc_worker.settings_sources import (
    FLAG_ONLY,
    CommandLine,
    Commands,
    Env,
    EnvSettings,
    empty_is_none,
    expand_home,
)
from signaling.bindings import Binding, SqliteBindings
from signaling.config import REDIS_KEY_PREFIX_PATTERN, SignalingSettings
from signaling.redis_store import STORE_ERRORS, shown_url

__all__ = ["BindingsCli", "BindingsList", "BindingsRelease", "bindings_main"]

_SERVER_FIELDS = SignalingSettings.model_fields


class _BindingsFile(EnvSettings):
    """Where the bindings are: the server's data folder or its bindings file."""

    model_config = SettingsConfigDict(
        env_prefix="RTC_SIGNALING_", populate_by_name=True, extra="ignore"
    )

    data_dir: Path = Field(
        Path("~/.local/share/rtc-signaling"),
        validate_default=True,
        description=_SERVER_FIELDS["data_dir"].description,
    )
    bindings_db: Path | None = Field(None, description=_SERVER_FIELDS["bindings_db"].description)
    redis_url: Annotated[SecretStr | None, Env("RTC_REDIS_URL")] = Field(
        None, description="The server's Redis (its bindings are there, not in the file)."
    )
    redis_key_prefix: Annotated[str, Env("RTC_REDIS_KEY_PREFIX")] = Field(
        "rtc:",
        pattern=REDIS_KEY_PREFIX_PATTERN,
        description=_SERVER_FIELDS["redis_key_prefix"].description,
    )

    _empty_path_is_none = field_validator("bindings_db", "redis_url", mode="before")(empty_is_none)

    _expand_home = field_validator("data_dir", "bindings_db")(expand_home)

    @property
    def bindings_file(self) -> Path:
        """``bindings_db``, or ``bindings.db`` in the data folder."""
        return self.bindings_db if self.bindings_db is not None else self.data_dir / "bindings.db"


class BindingsList(_BindingsFile):
    """List every peer id bound to a key: peer id, role, fingerprint, bound since, last seen."""

    json_output: Annotated[bool, FLAG_ONLY] = Field(
        False, validation_alias="json", description="Print JSON instead of text."
    )


class BindingsRelease(_BindingsFile):
    """Release a peer id: the next key that registers it is bound to it."""

    peer_id: CliPositionalArg[str] = Field(
        pattern=PEER_ID_PATTERN, description="The peer id to release."
    )


class BindingsCli(Commands):
    """Peer-id bindings of the signaling server (peer id -> the key that registered it first)."""

    list: CliSubCommand[BindingsList] = Field(description="List the bindings.")
    release: CliSubCommand[BindingsRelease] = Field(description="Release one peer id.")


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def _as_dict(binding: Binding) -> dict[str, str]:
    return {
        "peer_id": binding.peer_id,
        "role": binding.role,
        "fingerprint": binding.fingerprint,
        "created_at": _when(binding.created_at),
        "last_seen": _when(binding.last_seen),
    }


def _open(path: Path) -> SqliteBindings | None:
    if not path.exists():
        return None
    return SqliteBindings(path)


async def _in_redis(command: BindingsList | BindingsRelease, url: str) -> list[Binding]:
    """The bindings in Redis (list), or the one released (a list of at most one)."""
    from signaling.bindings_redis import RedisBindings
    from signaling.redis_store import connect

    client = connect(url)
    try:
        store = RedisBindings(client, prefix=command.redis_key_prefix)
        if isinstance(command, BindingsList):
            return await store.entries()
        released = await store.release(command.peer_id)
        return [] if released is None else [released]
    finally:
        await client.aclose()


def _redis(command: BindingsList | BindingsRelease, url: str) -> list[Binding]:
    try:
        return asyncio.run(_in_redis(command, url))
    except STORE_ERRORS as exc:
        raise OSError(f"{type(exc).__name__}: {exc}") from None


def bindings_main(argv: Sequence[str] | None) -> int:
    """Run ``rtc-signaling bindings ARGV``; returns the exit status (see the module)."""
    line = CommandLine(BindingsCli, "rtc-signaling bindings")
    try:
        command = line.command(line.parse(argv))
    except (ValidationError, CliSettingsError) as exc:
        print(f"rtc-signaling bindings: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    if not isinstance(command, BindingsList | BindingsRelease):
        raise TypeError(f"rtc-signaling bindings has no command {command!r}")
    url = None if command.redis_url is None else command.redis_url.get_secret_value()
    path = command.bindings_file if url is None else shown_url(url)
    try:
        store = None if url is not None else _open(command.bindings_file)
        if isinstance(command, BindingsList):
            if url is not None:
                found = _redis(command, url)
            else:
                found = [] if store is None else store.entries_now()
            if command.json_output:
                print(json.dumps([_as_dict(binding) for binding in found], indent=2))
            elif not found:
                print(f"no bindings in {path}")
            for binding in [] if command.json_output else found:
                row = _as_dict(binding)
                print("\t".join(row[key] for key in ("peer_id", "role", "fingerprint")), end="")
                print(f"\tbound {row['created_at']}\tlast seen {row['last_seen']}")
            return 0
        if url is not None:
            released = next(iter(_redis(command, url)), None)
        else:
            released = None if store is None else store.release_now(command.peer_id)
    except (OSError, sqlite3.Error) as exc:
        print(f"rtc-signaling bindings: cannot use {path}: {exc}", file=sys.stderr)
        return 1
    if released is None:
        print(f"{command.peer_id} is not bound (in {path})", file=sys.stderr)
        return 1
    print(f"released {released.peer_id} (was bound to {released.fingerprint})")
    return 0
