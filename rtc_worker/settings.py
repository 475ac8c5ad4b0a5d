"""Settings of ``rtc-worker``: one model per subcommand.

The command lines are generated from these models (see :mod:`rtc_worker.cli`), and so
are the README's configuration tables (``scripts/gen_config_docs.py``). Every field
has a description with its unit. Environment variables carry the ``RTC_`` prefix;
the few older names without it are still accepted (see
:mod:`rtc_worker.settings_sources`). Settings are validated once at start-up: a bad
value is a clear error before anything connects. The client's settings are in
:mod:`rtc_worker.client_settings`.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import CliSubCommand, CliToggleFlag, NoDecode, SettingsConfigDict

from protocol.limits import DEFAULT_LIMITS
from rtc_worker.holdings import (
    DEFAULT_ANONYMOUS_QUOTA,
    DEFAULT_QUOTA,
    DEFAULT_RESERVE_BYTES,
    PARTIAL_TTL_S,
)
from rtc_worker.key_settings import (
    WORKER_KEY_ENV,
    WORKER_KEY_HELP,
    WorkerIdCommand,
    worker_key_file,
)
from rtc_worker.settings_fields import (
    ANONYMOUS_ENV,
    ICE_POLICY_HELP,
    KEY_FILE_HELP,
    KEY_HELP,
    SIGNALING_URL,
    STORAGE_KEY_ENV,
    STORAGE_KEY_FILE_ENV,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    TOKEN_FILE_HELP,
    TOKEN_HELP,
    IcePolicy,
    plain,
    split_list,
)
from rtc_worker.settings_sources import (
    FLAG_ONLY,
    Commands,
    Env,
    EnvSettings,
    empty_is_none,
    env_names,
    expand_home,
    load_secret_files,
)
from rtc_worker.storage import layout

__all__ = [
    "DEFAULT_SHARED_ROOT_CANDIDATES",
    "DemoCommand",
    "WorkerCli",
    "WorkerIdCommand",
    "WorkerSettings",
]

#: Mount points probed, in order, when no shared root is configured. The first is
#: where RunAI / Vast.ai containers of our labs mount the shared volume.
DEFAULT_SHARED_ROOT_CANDIDATES: tuple[str, ...] = (
    "/home/jovyan/vast/amick",
    "/mnt/shared",
    "/shared",
)


class WorkerSettings(EnvSettings):
    """Register with the signaling server and run the jobs clients submit.

    Paths from clients are relative to the shared storage root; without shared
    storage, files come over the data channel into the worker's data folder.
    """

    model_config = SettingsConfigDict(env_prefix="RTC_", populate_by_name=True, extra="ignore")

    signaling_url: str = Field(SIGNALING_URL, description="WebSocket URL of the signaling server.")
    peer_id: Annotated[str, Env("RTC_WORKER_ID")] = Field(
        "worker-1",
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="The id this worker registers under ([A-Za-z0-9._-], 1 to 64 characters).",
    )
    token: Annotated[SecretStr | None, TOKEN_ENV] = Field(None, description=TOKEN_HELP)
    token_file: Annotated[Path | None, TOKEN_FILE_ENV] = Field(None, description=TOKEN_FILE_HELP)
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
        description="Job command template with {input} (the input's open file as /dev/fd/N, "
        "or a folder input's private copy), {workdir} and {output}, split like a shell would "
        "and run without one; unset: the built-in manifest job.",
    )
    ice_servers: Annotated[list[str], NoDecode] = Field(
        [],
        description="STUN/TURN server URLs (repeat the flag, or comma-separate); none means "
        "host candidates only (loopback, LAN).",
    )
    ice_transport_policy: IcePolicy = Field("all", description=ICE_POLICY_HELP)
    data_dir: Path = Field(
        Path("~/.local/share/rtc-worker"),
        validate_default=True,
        description="Worker-local storage (received files, job folders) when there is no "
        "shared root.",
    )
    key_file: Annotated[Path | None, WORKER_KEY_ENV] = Field(None, description=WORKER_KEY_HELP)
    allow_anonymous_clients: Annotated[bool, ANONYMOUS_ENV] = Field(
        False,
        description="Serve clients that did not authenticate with a key (spec-only "
        "clients), each connection its own principal with the smallest quotas.",
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
    authorized_clients_file: Path | None = Field(
        None,
        description="File of the client fingerprints this worker accepts, one per line "
        "(# comments; see rtc-client id); unset: any client that proves its key.",
    )
    handshake_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A data channel whose handshake has not ended this long after it "
        "opened is closed, seconds.",
    )
    peer_connect_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A peer connection not connected this long after its offer is closed, seconds.",
    )
    max_peer_connections: int = Field(
        32,
        ge=1,
        description="Peer connections held at once, all clients together; further offers "
        "are dropped until one closes.",
    )
    max_peer_connections_per_client: int = Field(
        4,
        ge=1,
        description="Peer connections held at once for one client identity (one "
        "fingerprint, or one peer id for anonymous clients).",
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
    storage_api_key: Annotated[SecretStr | None, STORAGE_KEY_ENV] = Field(
        None, description=KEY_HELP
    )
    api_key_file: Annotated[Path | None, STORAGE_KEY_FILE_ENV] = Field(
        None, description=KEY_FILE_HELP
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
    # The relay road: files the client encrypted and uploaded to the storage service.
    relay_road: bool = Field(
        True,
        description="Offer the relay road: a client's file is fetched from the storage "
        "service (encrypted by the client, decrypted and verified chunk by chunk here); "
        "only with storage_url and storage_api_key.",
    )
    relay_fetch_timeout_s: float = Field(
        30.0,
        gt=0,
        le=600,
        description="Longest wait for the storage service while fetching a relay object (to "
        "connect, for its answer, for the next bytes), seconds.",
    )
    relay_fetch_retries: int = Field(
        5,
        ge=1,
        le=30,
        description="Requests of a relay object in a row without progress (no new chunk, or "
        "below 1 MB/s) before the relay road ends with RELAY_UNREACHABLE (the client goes on "
        "over the data channel); "
        "waits start at 0.2 s and double.",
    )
    allow_hardlinks: bool = Field(
        False,
        description="Accept an input file that has other hard links, and pack hard-linked "
        "files into results; off: the input is refused (Hard-linked file refused) and such "
        "files are skipped, as another name of the same content may lie outside the root.",
    )
    job_env: Annotated[list[str], NoDecode] = Field(
        [],
        description="Variables a job command inherits besides PATH, HOME, LANG, LC_* and TZ: "
        "names or patterns such as CUDA_* (comma-separated); a secret's variable is refused.",
    )
    file_umask: str = Field(
        "027",
        pattern=r"^0?[0-7]{3}$",
        description="Umask of the files and folders the worker and its jobs create on "
        "storage, octal; 027: readable by the group at most, never by other users.",
    )
    # Prometheus metrics on an optional port (off by default; no authentication).
    metrics_port: Annotated[int | None, Env("RTC_METRICS_PORT")] = Field(
        None,
        ge=0,
        le=65535,
        description="Serve GET /metrics (Prometheus) on this TCP port; 0: any free port "
        "(logged); unset: off.",
    )
    metrics_host: Annotated[str, Env("RTC_METRICS_HOST")] = Field(
        "127.0.0.1",
        min_length=1,
        description="Address the metrics port binds; 127.0.0.1: this machine only (the port "
        "has no authentication: expose it only to the scraper's network).",
    )
    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING or ERROR.")

    _split_lists = field_validator(
        "shared_root_candidates", "ice_servers", "job_env", mode="before"
    )(split_list)
    _expand_data_dir = field_validator("data_dir")(expand_home)
    _expand_key_file = field_validator("key_file")(expand_home)
    _unset_key_file = field_validator("key_file", mode="before")(empty_is_none)

    @property
    def identity_file(self) -> Path:
        """The worker's key file: ``key_file``, or ``identity.key`` in ``data_dir``."""
        return worker_key_file(self.key_file, self.data_dir)

    @model_validator(mode="after")
    def _secrets(self) -> Self:
        secrets = [("token", "token_file", "token"), ("storage_api_key", "api_key_file", "key")]
        load_secret_files(self, secrets)
        variables = {
            name for fields in secrets for f in fields[:2] for name in env_names(type(self), f)
        }
        for pattern in self.job_env:
            leaked = sorted(name for name in variables if fnmatchcase(name, pattern))
            if leaked:
                raise ValueError(f"job_env {pattern!r} would give jobs the secret {leaked[0]}")
        return self

    @property
    def token_value(self) -> str | None:
        """The signaling token as plain text, or None."""
        return plain(self.token)

    @property
    def storage_api_key_value(self) -> str | None:
        """The storage service's key as plain text, or None."""
        return plain(self.storage_api_key)

    @property
    def relay_road_offered(self) -> bool:
        """Whether the worker offers the relay road (``relay_road`` with a storage
        service URL and key)."""
        return self.relay_road and bool(self.storage_url) and bool(self.storage_api_key_value)

    @property
    def umask(self) -> int:
        """:attr:`file_umask` as permission bits."""
        return int(self.file_umask, 8)

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
    serve: Annotated[bool, FLAG_ONLY] = Field(
        False,
        description="After the jobs, keep the signaling server and the worker running and "
        "print the browser page's address and token, until Ctrl-C.",
    )


class WorkerCli(Commands):
    """WebRTC peer worker for shared-storage jobs."""

    model_config = SettingsConfigDict(cli_shortcuts={"ice-servers": "ice-server"})

    serve: CliSubCommand[WorkerSettings] = Field(
        description="Register with signaling and serve jobs."
    )
    id: CliSubCommand[WorkerIdCommand] = Field(
        description="Print the worker's fingerprint and key file (creating the key)."
    )
    demo: CliSubCommand[DemoCommand] = Field(
        description="Run signaling, a worker and a client on loopback."
    )
    version: Annotated[CliToggleFlag[bool], FLAG_ONLY] = Field(
        False, description="Print the version and exit."
    )
