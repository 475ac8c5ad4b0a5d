"""The key-file settings of the worker and the client, and their ``id`` commands.

``rtc-worker id`` and ``rtc-client id`` print the fingerprint of the peer's key and the
key file, creating the key (mode 0600) on first use, exactly where ``rtc-worker serve``
and the client's other commands look for it:

* the worker: ``--key-file`` / ``RTC_WORKER_KEY_FILE``, else ``identity.key`` in its data
  folder (``--data-dir`` / ``RTC_DATA_DIR``);
* the client: ``--key-file`` / ``RTC_CLIENT_KEY_FILE``, else
  ``$XDG_CONFIG_HOME/rtc-client/identity.key`` (``~/.config/rtc-client/identity.key``).

Source: DESIGN.md ("Identity first"); the XDG Base Directory specification.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from rtc_worker.identity import KEY_FILE_NAME, default_client_key_file
from rtc_worker.settings_sources import Env, EnvSettings, empty_is_none, expand_home

__all__ = [
    "CLIENT_KEY_ENV",
    "CLIENT_KEY_HELP",
    "WORKER_KEY_ENV",
    "WORKER_KEY_HELP",
    "ClientIdCommand",
    "WorkerIdCommand",
    "client_key_file",
    "worker_key_file",
]

WORKER_KEY_ENV = Env("RTC_WORKER_KEY_FILE")
"""The variable of the worker's key file."""
CLIENT_KEY_ENV = Env("RTC_CLIENT_KEY_FILE")
"""The variable of the client's key file."""
WORKER_KEY_HELP = (
    "The worker's Ed25519 key (PEM, mode 0600), created on first start; its fingerprint "
    "is the worker's identity; unset: identity.key in the data folder."
)
CLIENT_KEY_HELP = (
    "The client's Ed25519 key (PEM, mode 0600), created on first start; its fingerprint "
    "is the client's identity; unset: $XDG_CONFIG_HOME/rtc-client/identity.key "
    "(~/.config/rtc-client/identity.key)."
)


def worker_key_file(key_file: Path | None, data_dir: Path) -> Path:
    """The worker's key file: ``key_file``, or ``identity.key`` in ``data_dir``."""
    return key_file if key_file is not None else data_dir / KEY_FILE_NAME


def client_key_file(key_file: Path | None) -> Path:
    """The client's key file: ``key_file``, or the default under the XDG config folder."""
    return key_file if key_file is not None else default_client_key_file()


class WorkerIdCommand(EnvSettings):
    """Print this worker's identity: the fingerprint of its key, and the key file.

    The key is created on first use (mode 0600), as ``rtc-worker serve`` would.
    """

    model_config = SettingsConfigDict(env_prefix="RTC_", populate_by_name=True, extra="ignore")

    data_dir: Path = Field(
        Path("~/.local/share/rtc-worker"),
        validate_default=True,
        description="The worker's data folder (its key is identity.key there by default).",
    )
    key_file: Annotated[Path | None, WORKER_KEY_ENV] = Field(None, description=WORKER_KEY_HELP)

    _expand = field_validator("data_dir", "key_file")(expand_home)
    _unset_key_file = field_validator("key_file", mode="before")(empty_is_none)

    @property
    def identity_file(self) -> Path:
        """The worker's key file: ``key_file``, or ``identity.key`` in ``data_dir``."""
        return worker_key_file(self.key_file, self.data_dir)


class ClientIdCommand(EnvSettings):
    """Print this client's identity: the fingerprint of its key, and the key file.

    The key is created on first use (mode 0600), as the first ``rtc-client`` command would.
    """

    model_config = SettingsConfigDict(env_prefix="RTC_", populate_by_name=True, extra="ignore")

    key_file: Annotated[Path | None, CLIENT_KEY_ENV] = Field(None, description=CLIENT_KEY_HELP)

    _expand = field_validator("key_file")(expand_home)
    _unset_key_file = field_validator("key_file", mode="before")(empty_is_none)

    @property
    def identity_file(self) -> Path:
        """The client's key file: ``key_file``, or the default under the XDG config folder."""
        return client_key_file(self.key_file)
