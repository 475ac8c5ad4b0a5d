"""Settings of ``rtc-signaling``: one model, from which its command line is generated.

Values come from flags, then the environment, then the defaults. Every field has a
description with its unit; the README's tables are generated from them
(``scripts/gen_config_docs.py``). Variables are ``RTC_SIGNALING_`` + the field name
(``RTC_LOG_LEVEL`` for the log level); the result store's older names
(``STORAGE_PATH``, ``STORAGE_API_KEY``, ``DATABASE_PATH``, ``AUTO_DELETE``, ...) and
``PORT`` are still accepted, after the canonical ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import CliToggleFlag, NoDecode, SettingsConfigDict

from protocol.signaling import DEFAULT_MAX_FRAME_BYTES, ICE_URL_SCHEMES
from rtc_worker.settings_sources import (
    FLAG_ONLY,
    Env,
    EnvSettings,
    empty_is_none,
    expand_home,
    load_secret_files,
)
from signaling.turn import TurnCredentials

__all__ = [
    "DEFAULT_CLEANUP_INTERVAL_S",
    "DEFAULT_CLIENT_BINDING_TTL_S",
    "DEFAULT_DATABASE_RESERVE_BYTES",
    "DEFAULT_DISK_RESERVE_BYTES",
    "DEFAULT_DOWNLOAD_TOKEN_TTL_S",
    "DEFAULT_MAX_BINDINGS_PER_KEY",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_CONNECTIONS_PER_ADDRESS",
    "DEFAULT_REDIS_PRESENCE_TTL_S",
    "DEFAULT_REGISTER_TIMEOUT_S",
    "DEFAULT_STORAGE_MAX_FILE_SIZE",
    "DEFAULT_TURN_TTL_S",
    "DEFAULT_UPLOAD_CHUNK_SIZE",
    "DEFAULT_UPLOAD_QUOTA_BYTES",
    "DEFAULT_UPLOAD_QUOTA_COUNT",
    "DEFAULT_UPLOAD_TTL_S",
    "LOG_LEVELS",
    "MIN_HARD_FRAME_BYTES",
    "REDIS_KEY_PREFIX_PATTERN",
    "REDIS_URL_SCHEMES",
    "SignalingCli",
    "SignalingSettings",
]

DEFAULT_STORAGE_MAX_FILE_SIZE = 10 * 1024**3
"""Default largest upload accepted by the result store, in bytes (10 GiB)."""

DEFAULT_TURN_TTL_S = 86400.0
"""Default lifetime of a TURN credential handed out by signaling, in seconds (24 h)."""

DEFAULT_UPLOAD_CHUNK_SIZE = 8 * 1024**2
"""Default chunk size of resumable uploads, in bytes (8 MiB)."""

DEFAULT_UPLOAD_TTL_S = 24 * 3600.0
"""Default age after which an unfinished upload is removed, in seconds (24 h)."""

DEFAULT_CLEANUP_INTERVAL_S = 3600.0
"""Default interval between two cleanup passes, in seconds (1 h)."""

DEFAULT_REGISTER_TIMEOUT_S = 10.0
"""Default time a socket has to register after it opened, in seconds."""

DEFAULT_MAX_CONNECTIONS = 10_000
"""Default cap on open WebSockets in total."""

DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 128
"""Default cap on open WebSockets from one remote address."""

DEFAULT_MAX_BINDINGS_PER_KEY = 1000
"""Default cap on peer ids bound to one key."""

DATABASE_URL_SCHEMES = ("sqlite:///", "postgresql://", "postgres://", "postgresql+asyncpg://")
"""How a ``database_url`` may start (SQLite file, PostgreSQL server)."""

DEFAULT_CLIENT_BINDING_TTL_S = 90 * 86400.0
"""Default age after its last registration when a client's binding is released, in
seconds (90 days)."""

DEFAULT_REDIS_PRESENCE_TTL_S = 5.0
"""Default lifetime of a signaling process's presence in Redis, in seconds."""

DEFAULT_DOWNLOAD_TOKEN_TTL_S = 7 * 24 * 3600.0
"""Default lifetime of a download token, in seconds (7 days)."""

DEFAULT_DISK_RESERVE_BYTES = 1024**3
"""Default free space uploads must leave on the storage disk, in bytes (1 GiB)."""

DEFAULT_DATABASE_RESERVE_BYTES = 8 * 1024**2
"""Default size of the database's reserve file, in bytes (8 MiB)."""

DEFAULT_UPLOAD_QUOTA_BYTES = 20 * 1024**3
"""Default announced bytes of open resumable uploads per principal, in bytes (20 GiB)."""

DEFAULT_UPLOAD_QUOTA_COUNT = 16
"""Default number of open resumable uploads per principal."""

REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://")
"""Accepted schemes of ``redis_url``."""

REDIS_KEY_PREFIX_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
"""What a ``redis_key_prefix`` may be."""

LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
"""Accepted values of ``log_level`` (loguru's level names)."""

MIN_HARD_FRAME_BYTES = 1024 * 1024
"""Lower bound of the hard per-message limit handed to aiohttp, in bytes (1 MiB)."""


class SignalingSettings(EnvSettings):
    """Configuration of the signaling server and of its result store.

    The store is on when ``storage_path`` is set, and then it needs an API key: a
    result store open to anyone who can reach the port is refused outright rather
    than allowed on some bindings, so the rule is the same everywhere.

    Raises:
        pydantic.ValidationError: when a value is out of range or malformed, or when
            storage is enabled without an API key.
    """

    model_config = SettingsConfigDict(
        env_prefix="RTC_SIGNALING_", populate_by_name=True, extra="ignore"
    )

    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: Annotated[int, Env("RTC_SIGNALING_PORT", "PORT")] = Field(
        8765, ge=0, le=65535, description="TCP port to bind; 0 picks any free port."
    )
    token: SecretStr | None = Field(
        None,
        description="Token every peer must send in register (compared in constant time); "
        "unset or empty: no authentication. Prefer the environment or --token-file: a flag "
        "shows in the process list.",
    )
    token_file: Path | None = Field(
        None, description="File holding the token (read once at start; chmod 600 it)."
    )
    turn_urls: Annotated[list[str], NoDecode, Env("RTC_TURN_URLS")] = Field(
        [],
        description="TURN (and STUN) URLs handed to every peer in its registered frame and "
        "in each offer it receives, with time-limited credentials (repeat the flag, or "
        "comma-separate): turn:HOST:PORT, turn:HOST:PORT?transport=tcp, turns:..., stun:...; "
        "needs the TURN secret. Peers built on aiortc use the first turn: URL.",
    )
    turn_secret: Annotated[SecretStr | None, Env("RTC_TURN_SECRET")] = Field(
        None,
        description="Secret shared with the TURN server (coturn's static-auth-secret, "
        "use-auth-secret) from which each credential is made as HMAC-SHA1; needs TURN URLs. "
        "Prefer the environment or --turn-secret-file: a flag shows in the process list.",
    )
    turn_secret_file: Annotated[Path | None, Env("RTC_TURN_SECRET_FILE")] = Field(
        None, description="File holding the TURN secret (read once at start; chmod 600 it)."
    )
    turn_ttl_s: Annotated[float, Env("RTC_TURN_TTL_S")] = Field(
        DEFAULT_TURN_TTL_S,
        ge=1,
        le=30 * 86400,
        description="Lifetime of each TURN credential, seconds; a credential past it gets "
        "no new allocation (a running one is not cut).",
    )
    max_frame_bytes: int = Field(
        DEFAULT_MAX_FRAME_BYTES,
        ge=256,
        le=64 * 1024 * 1024,
        description="Soft limit on one text frame, bytes of UTF-8: a larger frame gets "
        "FRAME_TOO_LARGE and the socket stays open; beyond max(4x, 1 MiB) the socket is "
        "closed with 1009.",
    )
    heartbeat_seconds: float = Field(
        20.0,
        gt=0,
        le=3600,
        description="Interval of WebSocket pings, seconds; a peer that does not answer is dropped.",
    )
    allow_anonymous_clients: Annotated[bool, Env("RTC_ALLOW_ANONYMOUS_CLIENTS")] = Field(
        False,
        description="Admit clients that register without a key (spec-only clients); their "
        "peer ids are never bound. Workers always prove a key.",
    )
    register_timeout_s: float = Field(
        DEFAULT_REGISTER_TIMEOUT_S,
        gt=0,
        le=3600,
        description="A socket not registered this long after it opened is closed "
        "(REGISTRATION_TIMEOUT), seconds.",
    )
    max_connections: int = Field(
        DEFAULT_MAX_CONNECTIONS,
        ge=1,
        description="Most open WebSockets in total (never more than the descriptor limit "
        "allows); one more is refused with HTTP 503 TOO_MANY_CONNECTIONS.",
    )
    max_connections_per_address: int = Field(
        DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
        ge=1,
        description="Most open WebSockets from one remote address; one more is refused "
        "with HTTP 429 TOO_MANY_CONNECTIONS.",
    )
    data_dir: Path = Field(
        Path("~/.local/share/rtc-signaling"),
        validate_default=True,
        description="Folder of the server's own state (the bindings database), created "
        "with mode 0700.",
    )
    bindings_db: Path | None = Field(
        None,
        description="SQLite file binding each peer id to the first key that registered "
        "it, kept across restarts; unset: bindings.db in the data folder.",
    )
    max_bindings_per_key: int = Field(
        DEFAULT_MAX_BINDINGS_PER_KEY,
        ge=1,
        description="Most peer ids bound to one key; binding one more releases that key's "
        "least recently registered id.",
    )
    client_binding_ttl_s: float = Field(
        DEFAULT_CLIENT_BINDING_TTL_S,
        ge=0,
        description="A client's binding not registered for this long is released, "
        "seconds; 0: never. A worker's binding never expires.",
    )
    # Signaling on Redis: several rtc-signaling processes act as one (registry, bindings,
    # presence and relayed frames in Redis; see signaling/registry_redis.py).
    redis_url: Annotated[SecretStr | None, Env("RTC_REDIS_URL")] = Field(
        None,
        description="Redis holding the registry, the peer-id bindings (instead of the SQLite "
        "file), presence and relayed frames, shared by every signaling process: "
        "redis://[:PASSWORD@]HOST:PORT/DB, rediss://... (TLS) or unix:///PATH; unset: "
        "in memory, one process. Run Redis with appendonly yes: bindings must survive it.",
    )
    redis_key_prefix: Annotated[str, Env("RTC_REDIS_KEY_PREFIX")] = Field(
        "rtc:",
        pattern=REDIS_KEY_PREFIX_PATTERN,
        description="Prefix of every Redis key; processes that share it act as one.",
    )
    redis_presence_ttl_s: Annotated[float, Env("RTC_REDIS_PRESENCE_TTL_S")] = Field(
        DEFAULT_REDIS_PRESENCE_TTL_S,
        ge=1,
        le=300,
        description="Lifetime of a process's presence in Redis, refreshed three times per "
        "lifetime, seconds: the peers of a process that dies vanish from every list "
        "within it.",
    )
    log_level: Annotated[str, Env("RTC_LOG_LEVEL")] = Field(
        "INFO", description=f"Log level: {', '.join(LOG_LEVELS)}."
    )
    storage_path: Annotated[Path | None, Env("RTC_SIGNALING_STORAGE_PATH", "STORAGE_PATH")] = Field(
        None,
        description="Folder of the result store; setting it enables the storage routes. "
        "Unset: no result store.",
    )
    storage_api_key: Annotated[
        SecretStr | None, Env("RTC_SIGNALING_STORAGE_API_KEY", "STORAGE_API_KEY")
    ] = Field(
        None,
        description="The operator's admin key of the storage routes (X-API-Key or "
        "Authorization: Bearer, compared in constant time): every route, every owner; "
        "mandatory with a storage path. Worker and client keys: rtc-signaling keys add. "
        "Prefer the environment or --api-key-file: a flag shows in the process list.",
    )
    api_key_file: Annotated[Path | None, Env("RTC_SIGNALING_STORAGE_API_KEY_FILE")] = Field(
        None, description="File holding the admin key (read once at start; chmod 600 it)."
    )
    database_path: Annotated[Path | None, Env("RTC_SIGNALING_DATABASE_PATH", "DATABASE_PATH")] = (
        Field(
            None,
            description="SQLite file of the store, migrated on start; unset: storage.db in the "
            "storage path.",
        )
    )
    # The storage service's records: a SQLite file by default, PostgreSQL to share them
    # between several instances (one schema, migrated on start by Alembic).
    database_url: Annotated[SecretStr | None, Env("RTC_DATABASE_URL")] = Field(
        None,
        description="Database of the storage service's records, migrated on start: "
        "sqlite:///FILE (unset: the database path) or postgresql://USER:PASSWORD@HOST:PORT/NAME "
        "for several instances sharing the records (and one blob store). Prefer the "
        "environment: the URL may hold a password.",
    )
    auto_delete: Annotated[bool, Env("RTC_SIGNALING_AUTO_DELETE", "AUTO_DELETE")] = Field(
        True,
        description="Delete a result after its owner's first complete download (its "
        "download token or its own key; not an admin's), unless the download asks "
        "?keep=true.",
    )
    storage_max_file_size: Annotated[
        int, Env("RTC_SIGNALING_STORAGE_MAX_FILE_SIZE", "STORAGE_MAX_FILE_SIZE")
    ] = Field(DEFAULT_STORAGE_MAX_FILE_SIZE, ge=1, description="Largest upload, bytes (413 above).")
    upload_chunk_size: Annotated[
        int, Env("RTC_SIGNALING_UPLOAD_CHUNK_SIZE", "UPLOAD_CHUNK_SIZE")
    ] = Field(
        DEFAULT_UPLOAD_CHUNK_SIZE,
        ge=1,
        le=1024**3,
        description="Chunk size of resumable uploads, bytes; the last chunk may be shorter.",
    )
    upload_ttl_s: Annotated[float, Env("RTC_SIGNALING_UPLOAD_TTL_S", "UPLOAD_TTL_S")] = Field(
        DEFAULT_UPLOAD_TTL_S,
        ge=0,
        description="Age after its last change when an unfinished upload expires (it no "
        "longer counts against the quota) and, like a cancelled upload or a deleted record, "
        "is removed by the cleanup, seconds.",
    )
    cleanup_interval_s: Annotated[
        float, Env("RTC_SIGNALING_CLEANUP_INTERVAL_S", "CLEANUP_INTERVAL_S")
    ] = Field(
        DEFAULT_CLEANUP_INTERVAL_S,
        gt=0,
        description="Interval between two cleanup passes of a running server, seconds.",
    )
    download_token_ttl_s: float = Field(
        DEFAULT_DOWNLOAD_TOKEN_TTL_S,
        gt=0,
        description="Lifetime of the download token an upload answers with, seconds.",
    )
    upload_quota_bytes: int = Field(
        DEFAULT_UPLOAD_QUOTA_BYTES,
        ge=0,
        description="Most announced bytes of open (unfinished, unexpired) resumable uploads "
        "per principal; an init beyond it gets 413 QUOTA_EXCEEDED.",
    )
    upload_quota_count: int = Field(
        DEFAULT_UPLOAD_QUOTA_COUNT,
        ge=0,
        description="Most open resumable uploads per principal; an init beyond it gets 413 "
        "QUOTA_EXCEEDED.",
    )
    disk_reserve_bytes: int = Field(
        DEFAULT_DISK_RESERVE_BYTES,
        ge=0,
        description="Free space uploads must leave on the storage disk, bytes: an upload or "
        "chunk that would eat into it gets 507 DISK_FULL; 0 turns the check off.",
    )
    database_reserve_bytes: int = Field(
        DEFAULT_DATABASE_RESERVE_BYTES,
        ge=0,
        description="Size of the reserve file kept beside the database, bytes: removed when "
        "the disk is full so that deletes can still be recorded, recreated when there is "
        "room; 0: none.",
    )
    # Blobs on an S3-compatible store (credentials: the standard AWS_* variables)
    storage_backend: Annotated[Literal["folder", "s3"], Env("RTC_STORAGE_BACKEND")] = Field(
        "folder",
        description="Where the result store keeps its blobs: folder (in the storage path) or "
        "s3 (s3_bucket; credentials from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
        "AWS_DEFAULT_REGION).",
    )
    s3_endpoint_url: Annotated[str | None, Env("RTC_S3_ENDPOINT_URL")] = Field(
        None,
        pattern=r"^https?://",
        description="Endpoint of an S3-compatible store (MinIO, R2, Ceph), e.g. "
        "https://minio.example.org:9000; unset: AWS S3.",
    )
    s3_bucket: Annotated[str | None, Env("RTC_S3_BUCKET")] = Field(
        None, description="Bucket of the blobs with storage_backend s3 (it must exist)."
    )

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None and not url.get_secret_value().startswith(DATABASE_URL_SCHEMES):
            raise ValueError(
                f"the database URL must start with one of {', '.join(DATABASE_URL_SCHEMES)}"
            )
        return url

    @field_validator("turn_urls", mode="before")
    @classmethod
    def _split_turn_urls(cls, value: object) -> object:
        """A comma- or space-separated string (a variable, a flag) is a list."""
        if isinstance(value, str):
            return [url for url in value.replace(",", " ").split() if url]
        return value

    @field_validator("turn_urls")
    @classmethod
    def _ice_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(ICE_URL_SCHEMES) or len(url) > 512:
                raise ValueError(
                    f"TURN URL {url[:80]!r} must start with one of {', '.join(ICE_URL_SCHEMES)} "
                    "(at most 512 characters)"
                )
        return urls

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(REDIS_URL_SCHEMES):
            raise ValueError(f"the Redis URL must start with {', '.join(REDIS_URL_SCHEMES)}")
        return value

    @field_validator("token", "storage_api_key", "turn_secret", "redis_url", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        if value is None or value == "":
            return None
        if isinstance(value, SecretStr) and value.get_secret_value() == "":
            return None
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}")
        return level

    _empty_path_is_none = field_validator(
        "storage_path", "database_path", "bindings_db", "turn_secret_file", mode="before"
    )(empty_is_none)
    _empty_s3_is_none = field_validator("s3_endpoint_url", "s3_bucket", mode="before")(
        empty_is_none
    )

    _expand_home = field_validator("data_dir", "bindings_db")(expand_home)

    @model_validator(mode="after")
    def _storage_needs_key(self) -> Self:
        load_secret_files(
            self,
            [
                ("token", "token_file", "token"),
                ("storage_api_key", "api_key_file", "API key"),
                ("turn_secret", "turn_secret_file", "TURN secret"),
            ],
        )
        if self.turn_urls and self.turn_secret is None:
            raise ValueError(
                "TURN URLs are set (--turn-url / RTC_TURN_URLS) but no TURN secret: set "
                "RTC_TURN_SECRET or --turn-secret-file (coturn's static-auth-secret)"
            )
        if self.turn_secret is not None and not self.turn_urls:
            raise ValueError(
                "a TURN secret is set but no TURN URL: set --turn-url / RTC_TURN_URLS "
                "(e.g. turn:turn.example.org:3478)"
            )
        if self.storage_backend == "s3" and not self.s3_bucket:
            raise ValueError("the storage backend is s3 but no bucket is set: set RTC_S3_BUCKET")
        if self.storage_path is not None and self.storage_api_key is None and self._serves():
            raise ValueError(
                "storage is enabled (STORAGE_PATH / --storage-path) but no API key is set: "
                "set STORAGE_API_KEY or --storage-api-key"
            )
        return self

    def _serves(self) -> bool:
        """True when these settings run the server (whose store must not be open)."""
        return True

    @property
    def storage_enabled(self) -> bool:
        """True when the result store and its routes are on (``storage_path`` is set)."""
        return self.storage_path is not None

    @property
    def database_url_value(self) -> str | None:
        """The storage service's database URL: ``database_url``, else
        ``sqlite:///`` + :attr:`database_file`; ``None`` when storage is off."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return None if self.database_file is None else f"sqlite:///{self.database_file}"

    @property
    def database_file(self) -> Path | None:
        """The SQLite file of the store: ``database_path`` or ``<storage_path>/storage.db``."""
        if self.database_path is not None:
            return self.database_path
        return None if self.storage_path is None else self.storage_path / "storage.db"

    @property
    def bindings_file(self) -> Path:
        """The SQLite file of the bindings: ``bindings_db`` or ``<data_dir>/bindings.db``."""
        return self.bindings_db if self.bindings_db is not None else self.data_dir / "bindings.db"

    @property
    def storage_api_key_value(self) -> str | None:
        """The storage API key as plain text, or ``None`` when none is set."""
        return None if self.storage_api_key is None else self.storage_api_key.get_secret_value()

    @property
    def hard_frame_bytes(self) -> int:
        """aiohttp's ``max_msg_size`` in bytes: 4x the soft limit, at least 1 MiB.

        A message beyond this makes aiohttp close the socket with code 1009
        (message too big) instead of answering ``FRAME_TOO_LARGE``.
        """
        return max(4 * self.max_frame_bytes, MIN_HARD_FRAME_BYTES)

    @property
    def turn_credentials(self) -> TurnCredentials | None:
        """The maker of TURN credentials, or ``None`` when no TURN server is configured."""
        if self.turn_secret is None:
            return None
        return TurnCredentials(self.turn_urls, self.turn_secret.get_secret_value(), self.turn_ttl_s)

    @property
    def redis_url_value(self) -> str | None:
        """The Redis URL as plain text (it may hold a password: never log it)."""
        return None if self.redis_url is None else self.redis_url.get_secret_value()

    @property
    def token_value(self) -> str | None:
        """The token as plain text, or ``None`` when authentication is off."""
        return None if self.token is None else self.token.get_secret_value()


class SignalingCli(SignalingSettings):
    """WebSocket signaling server for WebRTC peers (GET /health, WS /ws).

    With --storage-path it also keeps results for clients that could not receive
    them over a data channel: uploads, downloads and resumable uploads, behind
    per-principal keys (the admin key below; worker and client keys from
    "rtc-signaling keys add|list|revoke", see "rtc-signaling keys --help"). Logs go to
    stderr; stdout carries one line, listening on ws://HOST:PORT/ws.

    Peer ids are bound to the first key that registers them; the operator lists and
    releases bindings with: rtc-signaling bindings list | release PEER_ID.
    """

    model_config = SettingsConfigDict(cli_shortcuts={"turn-urls": "turn-url"})

    cleanup_once: Annotated[bool, FLAG_ONLY] = Field(
        False,
        description="Run one cleanup pass of the store at the storage path, print what it "
        "removed as JSON and exit (no API key needed).",
    )
    version: Annotated[CliToggleFlag[bool], FLAG_ONLY] = Field(
        False, description="Print the version and exit."
    )

    def _serves(self) -> bool:
        """A cleanup pass serves nothing, so it needs no key."""
        return not self.cleanup_once
