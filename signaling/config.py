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
from typing import Annotated, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import CliToggleFlag, NoDecode, SettingsConfigDict

from protocol.signaling import DEFAULT_MAX_FRAME_BYTES, IceUrl
from rtc_worker.settings_sources import (
    FLAG_ONLY,
    Env,
    empty_is_none,
    expand_home,
    load_secret_files,
)
from signaling.config_storage import (
    DATABASE_URL_SCHEMES,
    DEFAULT_CLEANUP_INTERVAL_S,
    DEFAULT_DATABASE_RESERVE_BYTES,
    DEFAULT_DISK_RESERVE_BYTES,
    DEFAULT_DOWNLOAD_TOKEN_TTL_S,
    DEFAULT_STORAGE_MAX_FILE_SIZE,
    DEFAULT_UPLOAD_CHUNK_SIZE,
    DEFAULT_UPLOAD_QUOTA_BYTES,
    DEFAULT_UPLOAD_QUOTA_COUNT,
    DEFAULT_UPLOAD_TTL_S,
    StorageSettings,
)
from signaling.origin import normalize_origin
from signaling.turn import TurnCredentials

__all__ = [
    "DATABASE_URL_SCHEMES",
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
    "StorageSettings",
]

DEFAULT_TURN_TTL_S = 3600.0
"""Default lifetime of a TURN credential handed out by signaling, in seconds (1 h): peers
get fresh credentials with each relayed offer, and clients register again before theirs
expire, so a short lifetime costs nothing and shortens what a leaked one is worth."""

DEFAULT_REGISTER_TIMEOUT_S = 10.0
"""Default time a socket has to register after it opened, in seconds."""

DEFAULT_MAX_CONNECTIONS = 10_000
"""Default cap on open WebSockets in total."""

DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 128
"""Default cap on open WebSockets from one remote address."""

DEFAULT_MAX_BINDINGS_PER_KEY = 1000
"""Default cap on peer ids bound to one key."""

DEFAULT_CLIENT_BINDING_TTL_S = 90 * 86400.0
"""Default age after its last registration when a client's binding is released, in
seconds (90 days)."""

DEFAULT_REDIS_PRESENCE_TTL_S = 5.0
"""Default lifetime of a signaling process's presence in Redis, in seconds."""

REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://")
"""Accepted schemes of ``redis_url``."""

REDIS_KEY_PREFIX_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
"""What a ``redis_key_prefix`` may be."""

LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
"""Accepted values of ``log_level`` (loguru's level names)."""

MIN_HARD_FRAME_BYTES = 1024 * 1024
"""Lower bound of the hard per-message limit handed to aiohttp, in bytes (1 MiB)."""


class SignalingSettings(StorageSettings):
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
    turn_urls: Annotated[list[IceUrl], NoDecode, Env("RTC_TURN_URLS")] = Field(
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
        "no new allocation (coturn still refreshes a running one).",
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        [],
        description="Web origins (scheme://host[:port]) besides the server's own whose "
        "pages may open /ws and upload with tus at /files/ (CORS; repeat the flag, or "
        "comma-separate); a browser's upgrade from any other origin is refused with HTTP 403 "
        "ORIGIN_NOT_ALLOWED, its tus answers carry no CORS header. Peers that send no "
        "Origin (rtc-worker, rtc-client) are not affected.",
    )

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        if isinstance(value, str):
            value = [o for o in value.replace(",", " ").split() if o]
        return [normalize_origin(o) for o in value] if isinstance(value, list) else value

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
    # Operations: the readiness probe (GET /ready) and the Prometheus scrape (GET /metrics).
    ready_timeout_s: Annotated[float, Env("RTC_READY_TIMEOUT_S")] = Field(
        2.0,
        gt=0,
        le=60,
        description="How long each readiness check (database, blob store, Redis) and the "
        "storage figures of a scrape may take, seconds; a check slower than this fails.",
    )
    ready_cache_s: Annotated[float, Env("RTC_READY_CACHE_S")] = Field(
        2.0,
        ge=0,
        le=60,
        description="How long each readiness check's answer and the storage figures of a "
        "scrape are reused, seconds (one probe in flight; requests meanwhile await it); "
        "a failure shows at most this late. 0: probe on every request.",
    )
    metrics_token: Annotated[SecretStr | None, Env("RTC_METRICS_TOKEN")] = Field(
        None,
        description="Bearer token GET /metrics requires (Authorization: Bearer TOKEN); "
        "unset: /metrics answers anyone who reaches the port (bind to a private address). "
        "Prefer the environment or --metrics-token-file: a flag shows in the process list.",
    )
    metrics_token_file: Annotated[Path | None, Env("RTC_METRICS_TOKEN_FILE")] = Field(
        None, description="File holding the metrics token (read once at start; chmod 600 it)."
    )
    _empty_metrics_token = field_validator("metrics_token", "metrics_token_file", mode="before")(
        empty_is_none
    )

    @field_validator("turn_urls", mode="before")
    @classmethod
    def _split_turn_urls(cls, value: object) -> object:
        """A comma- or space-separated string (a variable, a flag) is a list."""
        if isinstance(value, str):
            return [url for url in value.replace(",", " ").split() if url]
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(REDIS_URL_SCHEMES):
            raise ValueError(f"the Redis URL must start with {', '.join(REDIS_URL_SCHEMES)}")
        return value

    @field_validator("token", "turn_secret", "redis_url", mode="before")
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

    _empty_path_is_none = field_validator("bindings_db", "turn_secret_file", mode="before")(
        empty_is_none
    )

    _expand_home = field_validator("data_dir", "bindings_db")(expand_home)

    @model_validator(mode="after")
    def _secrets_and_turn(self) -> Self:
        load_secret_files(
            self,
            [
                ("token", "token_file", "token"),
                ("turn_secret", "turn_secret_file", "TURN secret"),
                ("metrics_token", "metrics_token_file", "metrics token"),
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
        return self

    @property
    def bindings_file(self) -> Path:
        """The SQLite file of the bindings: ``bindings_db`` or ``<data_dir>/bindings.db``."""
        return self.bindings_db if self.bindings_db is not None else self.data_dir / "bindings.db"

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

    model_config = SettingsConfigDict(
        cli_shortcuts={"turn-urls": "turn-url", "allowed-origins": "allowed-origin"}
    )

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
