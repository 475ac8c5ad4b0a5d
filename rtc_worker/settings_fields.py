"""Fields and helpers that the worker's and the client's settings share.

The environment variables of the secrets and their help texts, the storage service's
key fields (:data:`StorageApiKey`, :data:`StorageKeyFile`, :data:`STORAGE_KEY_FILES`),
the list splitter of comma-separated settings, and the one accessor that turns a secret
into text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr

from rtc_worker.settings_sources import Env

__all__ = [
    "ANONYMOUS_ENV",
    "FLAG_SEEN",
    "ICE_POLICY_HELP",
    "KEY_FILE_HELP",
    "KEY_HELP",
    "SIGNALING_URL",
    "STORAGE_KEY_ENV",
    "STORAGE_KEY_FILES",
    "STORAGE_KEY_FILE_ENV",
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "TOKEN_FILE_HELP",
    "TOKEN_HELP",
    "IcePolicy",
    "StorageApiKey",
    "StorageKeyFile",
    "plain",
    "split_list",
]

IcePolicy = Literal["all", "relay"]
"""The W3C ``iceTransportPolicy``: ``"all"`` candidates, or ``"relay"`` candidates only."""

SIGNALING_URL = "ws://127.0.0.1:8765/ws"
TOKEN_ENV = Env("RTC_SIGNALING_TOKEN")
ANONYMOUS_ENV = Env("RTC_ALLOW_ANONYMOUS_CLIENTS")
TOKEN_FILE_ENV = Env("RTC_SIGNALING_TOKEN_FILE")
STORAGE_KEY_ENV = Env("RTC_STORAGE_API_KEY", "STORAGE_API_KEY")
STORAGE_KEY_FILE_ENV = Env("RTC_STORAGE_API_KEY_FILE")
FLAG_SEEN = "; prefer the environment or a file: a flag shows in the process list."
ICE_POLICY_HELP = (
    "ICE transport policy (W3C iceTransportPolicy): all, or relay to gather relay "
    "candidates only, so every byte goes through the TURN server signaling hands out; "
    "relay without any TURN server is an error (NO_TURN_SERVER)."
)
TOKEN_HELP = "Token the signaling server requires, if any" + FLAG_SEEN
TOKEN_FILE_HELP = "File holding the signaling token (read once at start; chmod 600 it)."
KEY_HELP = "Key of the storage service (sent as X-API-Key)" + FLAG_SEEN
KEY_FILE_HELP = "File holding the storage service's key (read once at start; chmod 600 it)."

StorageApiKey = Annotated[SecretStr | None, STORAGE_KEY_ENV, Field(description=KEY_HELP)]
"""The ``storage_api_key`` field (``RTC_STORAGE_API_KEY``; default it to None)."""
StorageKeyFile = Annotated[Path | None, STORAGE_KEY_FILE_ENV, Field(description=KEY_FILE_HELP)]
"""The ``api_key_file`` field (``RTC_STORAGE_API_KEY_FILE``; default it to None)."""
#: :func:`~rtc_worker.settings_sources.load_secret_files`'s pair of the two fields above.
STORAGE_KEY_FILES = (("storage_api_key", "api_key_file", "storage API key"),)


def split_list(value: Any) -> Any:
    """Accept a comma- or whitespace-separated string for list settings (env, flags)."""
    if isinstance(value, str):
        return [item for item in value.replace(",", " ").split() if item]
    return value


def plain(secret: SecretStr | None) -> str | None:
    """A secret's text, for the one call that sends it (never for a log)."""
    return None if secret is None else secret.get_secret_value()
