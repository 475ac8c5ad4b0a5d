"""Worker and client configuration, from flags and the environment (pydantic-settings).

Every setting has an environment variable (listed in the README); a command-line
flag, when given, wins over the environment. Settings are validated once at
start-up: a bad value is a clear error before anything connects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["DEFAULT_SHARED_ROOT_CANDIDATES", "ClientSettings", "WorkerSettings"]

#: Mount points probed, in order, when no shared root is configured. The first is
#: where RunAI / Vast.ai containers of our labs mount the shared volume.
DEFAULT_SHARED_ROOT_CANDIDATES: tuple[str, ...] = (
    "/home/jovyan/vast/amick",
    "/mnt/shared",
    "/shared",
)


def _split_list(value: Any) -> Any:
    """Accept a comma- or whitespace-separated string for list settings from env."""
    if isinstance(value, str):
        return [item for item in value.replace(",", " ").split() if item]
    return value


class WorkerSettings(BaseSettings):
    """Configuration of ``rtc-worker serve``.

    Environment variables are named in each field's ``validation_alias``; the
    first alias is the flag-derived keyword used by the CLI.
    """

    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore")

    signaling_url: str = Field(
        "ws://127.0.0.1:8765/ws",
        validation_alias=AliasChoices("signaling_url", "RTC_SIGNALING_URL"),
        description="WebSocket URL of the signaling server.",
    )
    peer_id: str = Field(
        "worker-1",
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        validation_alias=AliasChoices("peer_id", "RTC_WORKER_ID"),
        description="The id this worker registers under.",
    )
    token: str | None = Field(
        None,
        validation_alias=AliasChoices("token", "RTC_SIGNALING_TOKEN"),
        description="Token the signaling server requires, if any.",
    )
    shared_root: Path | None = Field(
        None,
        validation_alias=AliasChoices("shared_root", "SHARED_STORAGE_ROOT"),
        description="Shared storage root; when unset, the first existing candidate.",
    )
    shared_root_candidates: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_SHARED_ROOT_CANDIDATES),
        validation_alias=AliasChoices("shared_root_candidates", "RTC_SHARED_ROOT_CANDIDATES"),
        description="Mount points probed when no root is set (comma-separated in env).",
    )
    job_command: str | None = Field(
        None,
        validation_alias=AliasChoices("job_command", "RTC_JOB_COMMAND"),
        description="Job command template with {input}, {workdir} and {output}; "
        "run without a shell. Unset: the built-in manifest job.",
    )
    ice_servers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=AliasChoices("ice_servers", "RTC_ICE_SERVERS"),
        description="STUN/TURN URLs (comma-separated in env); none for loopback/LAN.",
    )
    data_dir: Path = Field(
        default_factory=lambda: Path.home() / ".local" / "share" / "rtc-worker",
        validation_alias=AliasChoices("data_dir", "RTC_DATA_DIR"),
        description="Worker-local storage (received files, job folders) when there is "
        "no shared root.",
    )
    max_file_size: int = Field(
        10 * 1024**3,
        gt=0,
        validation_alias=AliasChoices("max_file_size", "RTC_MAX_FILE_SIZE"),
        description="Largest file accepted over the data channel, bytes (FILE_TOO_LARGE).",
    )
    chunk_size: int = Field(
        65536,
        ge=1024,
        le=262144,
        validation_alias=AliasChoices("chunk_size", "RTC_CHUNK_SIZE"),
        description="Chunk size of files the worker sends, bytes (64 KiB is safe for every peer).",
    )
    partial_ttl_s: float = Field(
        7 * 24 * 3600,
        gt=0,
        validation_alias=AliasChoices("partial_ttl_s", "RTC_PARTIAL_TTL_S"),
        description="Partial files untouched this long are removed, seconds.",
    )
    cleanup_interval_s: float = Field(
        3600,
        gt=0,
        validation_alias=AliasChoices("cleanup_interval_s", "RTC_CLEANUP_INTERVAL_S"),
        description="How often expired partial files are looked for, seconds.",
    )
    work_dir_name: str = Field(
        ".rtc-work",
        pattern=r"^\.?[A-Za-z0-9._-]{1,64}$",
        validation_alias=AliasChoices("work_dir_name", "RTC_WORK_DIR_NAME"),
        description="Folder under the shared root where ZIP inputs are extracted.",
    )
    keep_workdir: bool = Field(
        False,
        validation_alias=AliasChoices("keep_workdir", "RTC_KEEP_WORKDIR"),
        description="Keep a job's extracted working directory after it ends.",
    )
    zip_max_total_bytes: int = Field(
        20 * 10**9,
        gt=0,
        validation_alias=AliasChoices("zip_max_total_bytes", "RTC_ZIP_MAX_TOTAL_BYTES"),
        description="Cap on a ZIP's total uncompressed size, bytes.",
    )
    zip_max_ratio: float = Field(
        200.0,
        gt=1,
        validation_alias=AliasChoices("zip_max_ratio", "RTC_ZIP_MAX_RATIO"),
        description="Cap on a ZIP's compression ratio (uncompressed / compressed).",
    )
    zip_max_members: int = Field(
        100_000,
        gt=0,
        validation_alias=AliasChoices("zip_max_members", "RTC_ZIP_MAX_MEMBERS"),
        description="Cap on the number of members in a ZIP.",
    )
    max_text_frame_bytes: int = Field(
        64 * 1024,
        ge=1024,
        validation_alias=AliasChoices("max_text_frame_bytes", "RTC_MAX_TEXT_FRAME_BYTES"),
        description="Longest data-channel text frame accepted, bytes.",
    )
    max_path_bytes: int = Field(
        4096,
        ge=1,
        validation_alias=AliasChoices("max_path_bytes", "RTC_MAX_PATH_BYTES"),
        description="Longest relative path accepted, bytes of UTF-8.",
    )
    max_fields: int = Field(
        1024,
        ge=2,
        validation_alias=AliasChoices("max_fields", "RTC_MAX_FIELDS"),
        description="Most ::-separated fields in a data-channel text frame.",
    )
    cancel_grace_s: float = Field(
        5.0,
        ge=0,
        validation_alias=AliasChoices("cancel_grace_s", "RTC_CANCEL_GRACE_S"),
        description="Seconds between SIGTERM and SIGKILL when a job is cancelled.",
    )
    reconnect_max_delay_s: float = Field(
        30.0,
        gt=0,
        validation_alias=AliasChoices("reconnect_max_delay_s", "RTC_RECONNECT_MAX_DELAY_S"),
        description="Longest wait between two reconnection attempts to signaling, seconds.",
    )
    slow_validation_warning_s: float = Field(
        1.0,
        gt=0,
        validation_alias=AliasChoices("slow_validation_warning_s", "RTC_SLOW_VALIDATION_S"),
        description="Path validations slower than this are logged as warnings, seconds.",
    )
    storage_url: str | None = Field(
        None,
        validation_alias=AliasChoices("storage_url", "RTC_STORAGE_URL"),
        description="Base URL of the storage service (e.g. http://127.0.0.1:8765); "
        "unset: results are never uploaded (RESULTS_VIA_STORAGE is refused).",
    )
    storage_api_key: str | None = Field(
        None,
        validation_alias=AliasChoices("storage_api_key", "STORAGE_API_KEY"),
        description="Key the storage service requires (sent as X-API-Key).",
    )
    storage_retries: int = Field(
        5,
        ge=0,
        le=30,
        validation_alias=AliasChoices("storage_retries", "RTC_STORAGE_RETRIES"),
        description="Upload attempts after the first one (waits 0.5 s, doubling each time).",
    )
    storage_backoff_s: float = Field(
        0.5,
        gt=0,
        validation_alias=AliasChoices("storage_backoff_s", "RTC_STORAGE_BACKOFF_S"),
        description="First wait before an upload is retried, seconds.",
    )
    log_level: str = Field(
        "INFO",
        validation_alias=AliasChoices("log_level", "RTC_LOG_LEVEL"),
        description="Log level: DEBUG, INFO, WARNING or ERROR.",
    )

    _split_candidates = field_validator("shared_root_candidates", "ice_servers", mode="before")(
        _split_list
    )

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


class ClientSettings(BaseSettings):
    """Configuration of ``rtc-client`` and :class:`rtc_worker.client.RTCClient`."""

    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore")

    signaling_url: str = Field(
        "ws://127.0.0.1:8765/ws",
        validation_alias=AliasChoices("signaling_url", "RTC_SIGNALING_URL"),
    )
    token: str | None = Field(None, validation_alias=AliasChoices("token", "RTC_SIGNALING_TOKEN"))
    ice_servers: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=AliasChoices("ice_servers", "RTC_ICE_SERVERS")
    )
    reply_timeout_s: float = Field(
        60.0, gt=0, validation_alias=AliasChoices("reply_timeout_s", "RTC_REPLY_TIMEOUT_S")
    )
    connect_timeout_s: float = Field(
        30.0, gt=0, validation_alias=AliasChoices("connect_timeout_s", "RTC_CONNECT_TIMEOUT_S")
    )
    log_level: str = Field("WARNING", validation_alias=AliasChoices("log_level", "RTC_LOG_LEVEL"))
    cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "rtc-client",
        validation_alias=AliasChoices("cache_dir", "RTC_CLIENT_CACHE_DIR"),
        description="Partial downloads kept for a resume, and verified results.",
    )
    max_file_size: int = Field(
        10 * 1024**3, gt=0, validation_alias=AliasChoices("max_file_size", "RTC_MAX_FILE_SIZE")
    )

    _split_servers = field_validator("ice_servers", mode="before")(_split_list)
