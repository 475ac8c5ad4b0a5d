"""Settings of ``rtc-worker`` and ``rtc-client``: one model per program and subcommand.

The command lines are generated from these models (see :mod:`rtc_worker.cli`), and so
are the README's configuration tables (``scripts/gen_config_docs.py``). Every field
has a description with its unit. Environment variables carry the ``RTC_`` prefix;
the few older names without it are still accepted (see
:mod:`rtc_worker.settings_sources`). Settings are validated once at start-up: a bad
value is a clear error before anything connects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import CliSubCommand, CliToggleFlag, NoDecode, SettingsConfigDict

from protocol.limits import DEFAULT_LIMITS
from rtc_worker.holdings import (
    DEFAULT_ANONYMOUS_QUOTA,
    DEFAULT_QUOTA,
    DEFAULT_RESERVE_BYTES,
    PARTIAL_TTL_S,
)
from rtc_worker.settings_sources import FLAG_ONLY, Commands, Env, EnvSettings
from rtc_worker.storage import layout

__all__ = [
    "DEFAULT_SHARED_ROOT_CANDIDATES",
    "ClientCli",
    "ClientCommand",
    "ClientSettings",
    "DemoCommand",
    "DownloadCommand",
    "SubmitCommand",
    "WorkerCli",
    "WorkerSettings",
    "WorkersCommand",
]

#: Mount points probed, in order, when no shared root is configured. The first is
#: where RunAI / Vast.ai containers of our labs mount the shared volume.
DEFAULT_SHARED_ROOT_CANDIDATES: tuple[str, ...] = (
    "/home/jovyan/vast/amick",
    "/mnt/shared",
    "/shared",
)

_SIGNALING_URL = "ws://127.0.0.1:8765/ws"
_TOKEN_ENV = Env("RTC_SIGNALING_TOKEN")
_STORAGE_KEY_ENV = Env("RTC_STORAGE_API_KEY", "STORAGE_API_KEY")


def _split_list(value: Any) -> Any:
    """Accept a comma- or whitespace-separated string for list settings (env, flags)."""
    if isinstance(value, str):
        return [item for item in value.replace(",", " ").split() if item]
    return value


def _expand_home(value: Path) -> Path:
    """``~`` at the start of a folder setting means the user's home."""
    return value.expanduser()


class WorkerSettings(EnvSettings):
    """Register with the signaling server and run the jobs clients submit.

    Paths from clients are relative to the shared storage root; without shared
    storage, files come over the data channel into the worker's data folder.
    """

    model_config = SettingsConfigDict(env_prefix="RTC_", populate_by_name=True, extra="ignore")

    signaling_url: str = Field(_SIGNALING_URL, description="WebSocket URL of the signaling server.")
    peer_id: Annotated[str, Env("RTC_WORKER_ID")] = Field(
        "worker-1",
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="The id this worker registers under ([A-Za-z0-9._-], 1 to 64 characters).",
    )
    token: Annotated[str | None, _TOKEN_ENV] = Field(
        None, description="Token the signaling server requires, if any."
    )
    shared_root: Annotated[Path | None, Env("RTC_SHARED_ROOT", "SHARED_STORAGE_ROOT")] = Field(
        None,
        description="Shared storage root; unset: the first existing shared root candidate.",
    )
    shared_root_candidates: Annotated[list[str], NoDecode] = Field(
        list(DEFAULT_SHARED_ROOT_CANDIDATES),
        description="Mount points probed, in order, when no shared root is set (comma-separated).",
    )
    job_command: str | None = Field(
        None,
        description="Job command template with {input}, {workdir} and {output}, split like "
        "a shell would and run without one; unset: the built-in manifest job.",
    )
    ice_servers: Annotated[list[str], NoDecode] = Field(
        [],
        description="STUN/TURN server URLs (repeat the flag, or comma-separate); none means "
        "host candidates only (loopback, LAN).",
    )
    data_dir: Path = Field(
        Path("~/.local/share/rtc-worker"),
        validate_default=True,
        description="Worker-local storage (received files, job folders) when there is no "
        "shared root.",
    )
    max_file_size: int = Field(
        DEFAULT_LIMITS.max_file_bytes,
        gt=0,
        description="Largest file accepted over the data channel, bytes (FILE_TOO_LARGE "
        "before any byte).",
    )
    chunk_size: int = Field(
        DEFAULT_LIMITS.chunk_bytes,
        ge=1024,
        le=DEFAULT_LIMITS.max_binary_frame_bytes,
        description="Chunk size of the files the worker sends (results), bytes; 64 KiB is "
        "safe for every peer.",
    )
    # Partial files of channel transfers: expiry, per-identity quotas, the disk's reserve.
    partial_ttl_s: float = Field(
        PARTIAL_TTL_S,
        gt=0,
        description="Partial files untouched this long are removed, seconds (24 h).",
    )
    cleanup_interval_s: float = Field(
        3600, gt=0, description="How often expired partial files are looked for, seconds."
    )
    partial_quota_bytes: int = Field(
        DEFAULT_QUOTA.max_bytes,
        gt=0,
        description="Most bytes one client identity may have in unfinished transfers (the "
        "announced sizes of its partial files); above: QUOTA_EXCEEDED before any byte.",
    )
    partial_quota_files: int = Field(
        DEFAULT_QUOTA.max_files,
        gt=0,
        description="Most partial files (unfinished transfers) of one client identity.",
    )
    anonymous_partial_quota_bytes: int = Field(
        DEFAULT_ANONYMOUS_QUOTA.max_bytes,
        gt=0,
        description="As partial_quota_bytes, for an anonymous connection (each is its own "
        "identity; its partial files go when it closes).",
    )
    anonymous_partial_quota_files: int = Field(
        DEFAULT_ANONYMOUS_QUOTA.max_files,
        gt=0,
        description="As partial_quota_files, for an anonymous connection.",
    )
    proof_timeout_s: float = Field(
        DEFAULT_LIMITS.proof_timeout_s,
        gt=0,
        le=300,
        description="How long the worker waits for a FILE_PROOF (proof of possession "
        "before dedupe), seconds; then it asks for the bytes.",
    )
    free_space_reserve_bytes: int = Field(
        DEFAULT_RESERVE_BYTES,
        ge=0,
        description="Free space a transfer leaves on the store's disk, bytes: one that "
        "would go below it is refused DISK_FULL (at FILE_META and before each 1 MiB "
        "write), so the disk never fills; 0: no reserve.",
    )
    work_dir_name: str = Field(
        layout.WORK_DIR,
        pattern=r"^\.?[A-Za-z0-9._-]{1,64}$",
        description="Folder under the root where a job's ZIP input is extracted.",
    )
    keep_workdir: bool = Field(
        False, description="Keep a job's extracted working directory after it ends."
    )
    zip_max_total_bytes: int = Field(
        20 * 10**9, gt=0, description="Cap on a ZIP's total uncompressed size, bytes."
    )
    zip_max_ratio: float = Field(
        200.0,
        gt=1,
        description="Cap on a ZIP's compression ratio, uncompressed / compressed (members "
        "and archives above 1 MiB).",
    )
    zip_max_members: int = Field(
        100_000, gt=0, description="Cap on the number of members in a ZIP."
    )
    max_text_frame_bytes: int = Field(
        DEFAULT_LIMITS.max_text_frame_bytes,
        ge=1024,
        description="Longest data-channel text frame accepted, bytes.",
    )
    max_path_bytes: int = Field(
        DEFAULT_LIMITS.max_path_bytes,
        ge=1,
        description="Longest relative path accepted, bytes of UTF-8.",
    )
    max_fields: int = Field(
        DEFAULT_LIMITS.max_fields,
        ge=2,
        description="Most ::-separated fields in a data-channel text frame.",
    )
    cancel_grace_s: float = Field(
        5.0,
        ge=0,
        description="Wait between SIGTERM and SIGKILL when a job is cancelled, seconds.",
    )
    reconnect_max_delay_s: float = Field(
        30.0,
        gt=0,
        description="Longest wait between two reconnections to signaling, seconds.",
    )
    slow_validation_warning_s: Annotated[float, Env("RTC_SLOW_VALIDATION_S")] = Field(
        1.0,
        gt=0,
        description="Path validations slower than this are logged as warnings, seconds.",
    )
    storage_url: str | None = Field(
        None,
        description="Base URL of the storage service (e.g. http://127.0.0.1:8765): results "
        "ZIPs go there on RESULTS_VIA_STORAGE or when the client has gone; unset: never "
        "uploaded (RESULTS_VIA_STORAGE is refused).",
    )
    storage_api_key: Annotated[str | None, _STORAGE_KEY_ENV] = Field(
        None, description="Key of the storage service (sent as X-API-Key)."
    )
    storage_retries: int = Field(
        5,
        ge=0,
        le=30,
        description="Upload attempts after the first one; the wait starts at the storage "
        "backoff and doubles each time.",
    )
    storage_backoff_s: float = Field(
        0.5, gt=0, description="First wait before an upload is retried, seconds."
    )
    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING or ERROR.")

    _split_lists = field_validator("shared_root_candidates", "ice_servers", mode="before")(
        _split_list
    )
    _expand_data_dir = field_validator("data_dir")(_expand_home)

    def storage_root(self, shared_root: Path | None) -> Path:
        """Where received files and job folders live: the shared root, else ``data_dir``.

        Creates ``data_dir`` when it is used.
        """
        if shared_root is not None:
            return shared_root
        root = self.data_dir.expanduser()
        root.mkdir(parents=True, exist_ok=True)
        return root.resolve()

    def detect_shared_root(self) -> Path | None:
        """The shared storage root: the configured one, else the first existing candidate.

        Returns:
            The resolved root, or None when there is no shared storage.

        Raises:
            ValueError: a root was configured explicitly but is not a directory.
        """
        if self.shared_root is not None:
            root = self.shared_root.expanduser()
            if not root.is_dir():
                raise ValueError(f"shared storage root {root} is not a directory")
            return root.resolve()
        for candidate in self.shared_root_candidates:
            path = Path(candidate).expanduser()
            if path.is_dir():
                return path.resolve()
        return None


class DemoCommand(EnvSettings):
    """Run the signaling server, a worker and a client as three processes on loopback.

    Builds a training package on a temporary shared root, submits it, and sends it
    again from a client without shared storage.
    """

    keep: Annotated[bool, FLAG_ONLY] = Field(
        False, description="Keep the temporary shared root and logs for inspection."
    )
    size_mb: Annotated[float, FLAG_ONLY] = Field(
        8.0, description="Approximate size of the training package, MB (10^6 bytes)."
    )
    timeout: Annotated[float, FLAG_ONLY] = Field(
        60.0, description="Give up after this long, seconds."
    )


class WorkerCli(Commands):
    """WebRTC peer worker for shared-storage jobs."""

    model_config = SettingsConfigDict(cli_shortcuts={"ice-servers": "ice-server"})

    serve: CliSubCommand[WorkerSettings] = Field(
        description="Register with signaling and serve jobs."
    )
    demo: CliSubCommand[DemoCommand] = Field(
        description="Run signaling, a worker and a client on loopback."
    )
    version: Annotated[CliToggleFlag[bool], FLAG_ONLY] = Field(
        False, description="Print the version and exit."
    )


class ClientSettings(EnvSettings):
    """Configuration of ``rtc-client`` and :class:`rtc_worker.client.RTCClient`."""

    model_config = SettingsConfigDict(env_prefix="RTC_", populate_by_name=True, extra="ignore")

    signaling_url: str = Field(_SIGNALING_URL, description="WebSocket URL of the signaling server.")
    token: Annotated[str | None, _TOKEN_ENV] = Field(
        None, description="Token the signaling server requires, if any."
    )
    ice_servers: Annotated[list[str], NoDecode] = Field(
        [],
        description="STUN/TURN server URLs (repeat the flag, or comma-separate); none means "
        "host candidates only (loopback, LAN).",
    )
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

    _split_servers = field_validator("ice_servers", mode="before")(_split_list)
    _expand_cache_dir = field_validator("cache_dir")(_expand_home)


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


class DownloadCommand(EnvSettings):
    """Fetch a results ZIP from the storage service and verify its sha256."""

    model_config = SettingsConfigDict(env_prefix="RTC_", populate_by_name=True, extra="ignore")

    job_id: Annotated[str, FLAG_ONLY] = Field(description="The job's id.")
    storage_url: Annotated[str, FLAG_ONLY] = Field(
        description="Base URL of the storage service (e.g. http://127.0.0.1:8765)."
    )
    storage_api_key: Annotated[str | None, _STORAGE_KEY_ENV] = Field(
        None, description="Key of the storage service (sent as X-API-Key)."
    )
    output: Annotated[Path, FLAG_ONLY] = Field(
        description="Folder where results-{job_id}.zip is saved."
    )
    sha256: Annotated[str | None, FLAG_ONLY] = Field(
        None, description="Expected sha256 of the ZIP, hex."
    )
    keep: Annotated[bool, FLAG_ONLY] = Field(
        False, description="Ask the service to keep the file after this download."
    )
    log_level: str = Field("WARNING", description="Log level: DEBUG, INFO, WARNING or ERROR.")


class ClientCli(Commands):
    """Reference client: list workers, submit jobs, download stored results.

    Exit codes: 0 complete, 1 job failed, path refused or transfer failed, 2 usage,
    3 signaling or connection failure, 4 worker busy or protocol error.
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
    version: Annotated[CliToggleFlag[bool], FLAG_ONLY] = Field(
        False, description="Print the version and exit."
    )
