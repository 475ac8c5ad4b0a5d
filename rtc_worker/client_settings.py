"""Settings of ``rtc-client`` and :class:`rtc_worker.client.RTCClient`: one model per
subcommand, generated into the command line like the worker's (:mod:`rtc_worker.settings`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import CliSubCommand, CliToggleFlag, NoDecode, SettingsConfigDict

from protocol.limits import (
    DEFAULT_LIMITS,
    RELAY_CHUNK_BYTES,
    RELAY_MAX_CHUNK_BYTES,
    RELAY_MIN_CHUNK_BYTES,
)
from rtc_worker.key_settings import (
    CLIENT_KEY_ENV,
    CLIENT_KEY_HELP,
    ClientIdCommand,
    client_key_file,
)
from rtc_worker.settings_fields import (
    ICE_POLICY_HELP,
    SIGNALING_URL,
    STORAGE_KEY_FILES,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    TOKEN_FILE_HELP,
    TOKEN_HELP,
    IcePolicy,
    StorageApiKey,
    StorageKeyFile,
    plain,
    split_list,
)
from rtc_worker.settings_sources import (
    FLAG_ONLY,
    Commands,
    Env,
    EnvSettings,
    empty_is_none,
    expand_home,
    load_secret_files,
)

__all__ = [
    "ClientCli",
    "ClientCommand",
    "ClientIdCommand",
    "ClientSettings",
    "DownloadCommand",
    "RoadOption",
    "SubmitCommand",
    "WorkersCommand",
]

#: ``--road``: ``auto`` (choose), or the road to force (:class:`protocol.roads.Road`).
RoadOption = Literal["auto", "shared", "relay", "channel"]


class ClientSettings(EnvSettings):
    """Configuration of ``rtc-client`` and :class:`rtc_worker.client.RTCClient`."""

    model_config = SettingsConfigDict(env_prefix="RTC_", populate_by_name=True, extra="ignore")

    signaling_url: str = Field(SIGNALING_URL, description="WebSocket URL of the signaling server.")
    token: Annotated[SecretStr | None, TOKEN_ENV] = Field(None, description=TOKEN_HELP)
    token_file: Annotated[Path | None, TOKEN_FILE_ENV] = Field(None, description=TOKEN_FILE_HELP)
    ice_servers: Annotated[list[str], NoDecode] = Field(
        [],
        description="STUN/TURN server URLs (repeat the flag, or comma-separate); none means "
        "host candidates only (loopback, LAN).",
    )
    ice_transport_policy: IcePolicy = Field("all", description=ICE_POLICY_HELP)
    reply_timeout_s: float = Field(
        60.0, gt=0, description="Longest wait for each reply of a worker, seconds."
    )
    connect_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Longest wait for signaling, the worker's answer and the data channel, "
        "seconds.",
    )
    log_level: str = Field("WARNING", description="Log level: DEBUG, INFO, WARNING or ERROR.")
    cache_dir: Annotated[Path, Env("RTC_CLIENT_CACHE_DIR")] = Field(
        Path("~/.cache/rtc-client"),
        validate_default=True,
        description="Partial downloads kept for a resume, and verified results.",
    )
    max_file_size: int = Field(
        DEFAULT_LIMITS.max_file_bytes,
        gt=0,
        description="Largest file accepted from a worker, bytes.",
    )
    key_file: Annotated[Path | None, CLIENT_KEY_ENV] = Field(None, description=CLIENT_KEY_HELP)
    anonymous: Annotated[bool, FLAG_ONLY] = Field(
        False,
        description="Register and connect without a key (only where the operator allows "
        "anonymous clients).",
    )
    known_workers_file: Path | None = Field(
        None,
        description="Pinned worker keys, '<peer_id> <fingerprint>' per line: the first "
        "handshake with a worker records its key, another key later is refused; unset: "
        "known_workers beside the key file.",
    )

    _split_servers = field_validator("ice_servers", mode="before")(split_list)
    _expand_cache_dir = field_validator("cache_dir")(expand_home)
    _expand_key_file = field_validator("key_file", "known_workers_file")(expand_home)
    _unset_key_file = field_validator("key_file", "known_workers_file", mode="before")(
        empty_is_none
    )

    @property
    def identity_file(self) -> Path:
        """The client's key file: ``key_file``, or the default under the XDG config folder."""
        return client_key_file(self.key_file)

    @property
    def known_workers_path(self) -> Path:
        """The client's known-workers file: ``known_workers_file``, or beside the key."""
        if self.known_workers_file is not None:
            return self.known_workers_file
        return self.identity_file.parent / "known_workers"

    @model_validator(mode="after")
    def _secrets(self) -> Self:
        load_secret_files(self, [("token", "token_file", "token")])
        return self

    @property
    def token_value(self) -> str | None:
        """The signaling token as plain text, or None."""
        return plain(self.token)


class ClientCommand(ClientSettings):
    """What ``rtc-client workers`` and ``rtc-client submit`` share."""

    json_output: Annotated[bool, FLAG_ONLY] = Field(
        False, validation_alias="json", description="Print JSON instead of text."
    )


class WorkersCommand(ClientCommand):
    """List the workers registered with the signaling server."""


class SubmitCommand(ClientCommand):
    """Run a job on a worker.

    Shared storage: --input REL --output REL (add --file LOCAL to send a local copy when
    the worker cannot read the shared input). No shared storage: --file LOCAL
    --download DIR sends the file, runs the job and saves the verified results ZIP
    (extracted next to it).
    """

    worker: Annotated[str, FLAG_ONLY] = Field(description="The worker's peer id.")
    worker_key: Annotated[str | None, FLAG_ONLY] = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="The worker's fingerprint (rtc-worker id): its handshake must prove "
        "this key; unset: the known-workers file's pin, or trust on first use.",
    )
    input: Annotated[str | None, FLAG_ONLY] = Field(
        None, description="Input path relative to the shared root."
    )
    output: Annotated[str | None, FLAG_ONLY] = Field(
        None, description="Output folder relative to the shared root (created)."
    )
    file: Annotated[Path | None, FLAG_ONLY] = Field(
        None, description="A local input file to send over the data channel."
    )
    download: Annotated[Path | None, FLAG_ONLY] = Field(
        None, description="Folder where the results of a --file job are saved."
    )
    progress: Annotated[bool, FLAG_ONLY] = Field(
        True, description="Progress bars (bytes, MB/s, ETA) during transfers."
    )
    job_id: Annotated[str | None, FLAG_ONLY] = Field(
        None, description="Job id ([A-Za-z0-9._-], 1 to 64 characters); unset: the worker's."
    )
    wait: Annotated[float, FLAG_ONLY] = Field(
        0.0, description="Wait up to this long for the worker to register, seconds."
    )
    job_timeout: Annotated[float | None, FLAG_ONLY] = Field(
        None, description="Cancel the job after this long, seconds; unset: no limit."
    )
    trace: Annotated[bool, FLAG_ONLY] = Field(
        False, description="Print every data-channel frame sent and received."
    )
    via_storage: Annotated[bool, FLAG_ONLY] = Field(
        False,
        description="Have the worker upload the results ZIP to the storage service (fetch "
        "it with rtc-client download).",
    )
    storage_url: str | None = Field(
        None,
        description="Base URL of the storage service beside signaling (e.g. "
        "http://127.0.0.1:8765): the relay road uploads the encrypted file there; unset: "
        "no relay road.",
    )
    storage_api_key: StorageApiKey = None
    api_key_file: StorageKeyFile = None
    road: RoadOption = Field(
        "auto",
        description="How a --file input reaches the worker: auto picks the shared path, "
        "then the relay road (encrypted, through the storage service, when both sides "
        "reach it), then the data channel; shared, relay or channel forces one (exit 5 "
        "when it is unavailable or, for relay, fails).",
    )
    relay_part_mb: int = Field(
        64,
        ge=1,
        le=4096,
        description="Size of each relay object (one tus upload) on the relay road, MB "
        "(10^6 bytes, rounded down to whole chunks); the next part uploads while the "
        "worker fetches the last one.",
    )
    relay_chunk_bytes: int = Field(
        RELAY_CHUNK_BYTES,
        ge=RELAY_MIN_CHUNK_BYTES,
        le=RELAY_MAX_CHUNK_BYTES,
        description="Plaintext bytes per AES-256-GCM chunk on the relay road (each chunk "
        "is authenticated on its own: the worker verifies and writes chunk by chunk).",
    )

    @model_validator(mode="after")
    def _storage_secret(self) -> Self:
        load_secret_files(self, STORAGE_KEY_FILES)
        return self

    @property
    def storage_api_key_value(self) -> str | None:
        """The storage service's key as plain text, or None."""
        return plain(self.storage_api_key)


class DownloadCommand(EnvSettings):
    """Fetch a results ZIP from the storage service and verify its sha256."""

    model_config = SettingsConfigDict(env_prefix="RTC_", populate_by_name=True, extra="ignore")

    job_id: Annotated[str, FLAG_ONLY] = Field(description="The job's id.")
    storage_url: Annotated[str, FLAG_ONLY] = Field(
        description="Base URL of the storage service (e.g. http://127.0.0.1:8765)."
    )
    storage_api_key: StorageApiKey = None
    api_key_file: StorageKeyFile = None
    output: Annotated[Path, FLAG_ONLY] = Field(
        description="Folder where results-{job_id}.zip is saved."
    )
    sha256: Annotated[str | None, FLAG_ONLY] = Field(
        None, description="Expected sha256 of the ZIP, hex."
    )
    keep: Annotated[bool, FLAG_ONLY] = Field(
        False, description="Ask the service to keep the file after this download."
    )
    token: Annotated[SecretStr | None, Env("RTC_DOWNLOAD_TOKEN")] = Field(
        None,
        description="The job's download token (from RESULTS_STORED, printed by submit "
        "--via-storage): fetches that one result without a key.",
    )
    log_level: str = Field("WARNING", description="Log level: DEBUG, INFO, WARNING or ERROR.")

    @model_validator(mode="after")
    def _secrets(self) -> Self:
        load_secret_files(self, STORAGE_KEY_FILES)
        return self

    @property
    def token_value(self) -> str | None:
        """The download token as plain text, or None."""
        return plain(self.token)

    @property
    def storage_api_key_value(self) -> str | None:
        """The storage service's key as plain text, or None."""
        return plain(self.storage_api_key)


class ClientCli(Commands):
    """Reference client: list workers, submit jobs, download stored results.

    Exit codes: 0 complete, 1 job failed, path refused or transfer failed, 2 usage,
    3 signaling or connection failure, 4 worker busy or protocol error, 5 the road forced
    with --road is unavailable (ROAD_UNAVAILABLE) or, for relay, failed (its RELAY_* code).
    """

    model_config = SettingsConfigDict(cli_shortcuts={"ice-servers": "ice-server"})

    workers: CliSubCommand[WorkersCommand] = Field(description="List registered workers.")
    submit: CliSubCommand[SubmitCommand] = Field(
        description="Run a job: on shared storage (--input/--output) or on a local file "
        "sent over the data channel (--file/--download)."
    )
    download: CliSubCommand[DownloadCommand] = Field(
        description="Fetch a results ZIP from the storage service and verify its sha256."
    )
    id: CliSubCommand[ClientIdCommand] = Field(
        description="Print the client's fingerprint and key file (creating the key)."
    )
    version: Annotated[CliToggleFlag[bool], FLAG_ONLY] = Field(
        False, description="Print the version and exit."
    )
