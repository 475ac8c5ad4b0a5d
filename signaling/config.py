"""Settings of the signaling server, read from init kwargs, then the environment.

Environment variables:

========================================  =========================================
``RTC_SIGNALING_HOST``                    interface to bind (default ``127.0.0.1``)
``RTC_SIGNALING_PORT``                    TCP port (default ``8765``; ``0`` = any free)
``RTC_SIGNALING_TOKEN``                   shared token peers must present (default none)
``RTC_SIGNALING_MAX_FRAME_BYTES``         soft frame limit in bytes (default 262144)
``RTC_SIGNALING_HEARTBEAT_SECONDS``       WebSocket ping interval in seconds (default 20)
``RTC_LOG_LEVEL``                         loguru level name (default ``INFO``)
``PORT``                                  alias of ``RTC_SIGNALING_PORT`` (lower priority)
``STORAGE_PATH``                          folder of the result store; enables it (default
                                          none: storage off)
``STORAGE_API_KEY``                       key the storage routes require (mandatory when
                                          storage is enabled)
``DATABASE_PATH``                         SQLite file (default ``<STORAGE_PATH>/storage.db``)
``AUTO_DELETE``                           delete a result after its first complete
                                          download (default ``true``)
``STORAGE_MAX_FILE_SIZE``                 largest upload in bytes (default 10 GiB)
``UPLOAD_CHUNK_SIZE``                     chunk size of resumable uploads in bytes
                                          (default 8 MiB)
``UPLOAD_TTL_S``                          age in seconds after which an unfinished upload
                                          (and a deleted record) is removed (default 86400)
``CLEANUP_INTERVAL_S``                    seconds between two cleanup passes of the
                                          server (default 3600)
========================================  =========================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Self

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from protocol.signaling import DEFAULT_MAX_FRAME_BYTES

__all__ = [
    "DEFAULT_CLEANUP_INTERVAL_S",
    "DEFAULT_STORAGE_MAX_FILE_SIZE",
    "DEFAULT_UPLOAD_CHUNK_SIZE",
    "DEFAULT_UPLOAD_TTL_S",
    "LOG_LEVELS",
    "MIN_HARD_FRAME_BYTES",
    "SignalingSettings",
]

DEFAULT_STORAGE_MAX_FILE_SIZE = 10 * 1024**3
"""Default largest upload accepted by the result store, in bytes (10 GiB)."""

DEFAULT_UPLOAD_CHUNK_SIZE = 8 * 1024**2
"""Default chunk size of resumable uploads, in bytes (8 MiB)."""

DEFAULT_UPLOAD_TTL_S = 24 * 3600.0
"""Default age after which an unfinished upload is removed, in seconds (24 h)."""

DEFAULT_CLEANUP_INTERVAL_S = 3600.0
"""Default interval between two cleanup passes, in seconds (1 h)."""

LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
"""Accepted values of ``log_level`` (loguru's level names)."""

MIN_HARD_FRAME_BYTES = 1024 * 1024
"""Lower bound of the hard per-message limit handed to aiohttp, in bytes (1 MiB)."""


class SignalingSettings(BaseSettings):
    """Configuration of the signaling server.

    Fields (env var in parentheses):
        host: interface to bind (``RTC_SIGNALING_HOST``).
        port: TCP port, 0..65535, 0 meaning any free port (``RTC_SIGNALING_PORT``).
        token: shared secret peers send in ``register``; ``None`` or empty disables
            authentication (``RTC_SIGNALING_TOKEN``).
        max_frame_bytes: soft limit on one text frame, in bytes of UTF-8; larger frames
            get a ``FRAME_TOO_LARGE`` error and the socket stays open
            (``RTC_SIGNALING_MAX_FRAME_BYTES``).
        heartbeat_seconds: interval of WebSocket pings; a peer that does not answer is
            dropped (``RTC_SIGNALING_HEARTBEAT_SECONDS``).
        log_level: loguru level name (``RTC_LOG_LEVEL``).
        storage_path: folder of the fallback result store; setting it enables the
            storage routes (``STORAGE_PATH``).
        storage_api_key: key every storage route requires, as ``X-API-Key`` or
            ``Authorization: Bearer`` (``STORAGE_API_KEY``). It is mandatory whenever
            ``storage_path`` is set: a result store open to anyone who can reach the
            port is refused outright rather than allowed on some bindings, so the
            rule is the same everywhere.
        database_path: SQLite file of the store; ``None`` means
            ``<storage_path>/storage.db`` (``DATABASE_PATH``).
        auto_delete: delete a result after its first complete download unless the
            download asks ``?keep=true`` (``AUTO_DELETE``).
        storage_max_file_size: largest upload in bytes; larger ones get 413
            (``STORAGE_MAX_FILE_SIZE``).
        upload_chunk_size: bytes per chunk of a resumable upload; the last chunk may
            be shorter (``UPLOAD_CHUNK_SIZE``).
        upload_ttl_s: seconds after its last change when an unfinished or cancelled
            upload, or a deleted record, is removed by the cleanup (``UPLOAD_TTL_S``).
        cleanup_interval_s: seconds between two cleanup passes of a running server
            (``CLEANUP_INTERVAL_S``).

    Raises:
        pydantic.ValidationError: when a value is out of range or malformed, or when
            storage is enabled without an API key.
    """

    model_config = SettingsConfigDict(
        env_prefix="RTC_SIGNALING_",
        populate_by_name=True,
        extra="ignore",
    )

    host: str = "127.0.0.1"
    port: Annotated[
        int,
        Field(ge=0, le=65535, validation_alias=AliasChoices("RTC_SIGNALING_PORT", "PORT")),
    ] = 8765
    token: SecretStr | None = None
    max_frame_bytes: Annotated[int, Field(ge=256, le=64 * 1024 * 1024)] = DEFAULT_MAX_FRAME_BYTES
    heartbeat_seconds: Annotated[float, Field(gt=0, le=3600)] = 20.0
    log_level: str = Field(default="INFO", validation_alias="RTC_LOG_LEVEL")
    storage_path: Path | None = Field(default=None, validation_alias="STORAGE_PATH")
    storage_api_key: SecretStr | None = Field(default=None, validation_alias="STORAGE_API_KEY")
    database_path: Path | None = Field(default=None, validation_alias="DATABASE_PATH")
    auto_delete: bool = Field(default=True, validation_alias="AUTO_DELETE")
    storage_max_file_size: Annotated[int, Field(ge=1)] = Field(
        default=DEFAULT_STORAGE_MAX_FILE_SIZE, validation_alias="STORAGE_MAX_FILE_SIZE"
    )
    upload_chunk_size: Annotated[int, Field(ge=1, le=1024**3)] = Field(
        default=DEFAULT_UPLOAD_CHUNK_SIZE, validation_alias="UPLOAD_CHUNK_SIZE"
    )
    upload_ttl_s: Annotated[float, Field(ge=0)] = Field(
        default=DEFAULT_UPLOAD_TTL_S, validation_alias="UPLOAD_TTL_S"
    )
    cleanup_interval_s: Annotated[float, Field(gt=0)] = Field(
        default=DEFAULT_CLEANUP_INTERVAL_S, validation_alias="CLEANUP_INTERVAL_S"
    )

    @field_validator("token", "storage_api_key", mode="before")
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

    @field_validator("storage_path", "database_path", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _storage_needs_key(self) -> Self:
        if self.storage_path is not None and self.storage_api_key is None:
            raise ValueError(
                "storage is enabled (STORAGE_PATH / --storage-path) but no API key is set: "
                "set STORAGE_API_KEY or --storage-api-key"
            )
        return self

    @property
    def storage_enabled(self) -> bool:
        """True when the result store and its routes are on (``storage_path`` is set)."""
        return self.storage_path is not None

    @property
    def database_file(self) -> Path | None:
        """The SQLite file of the store: ``database_path`` or ``<storage_path>/storage.db``."""
        if self.database_path is not None:
            return self.database_path
        return None if self.storage_path is None else self.storage_path / "storage.db"

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
    def token_value(self) -> str | None:
        """The token as plain text, or ``None`` when authentication is off."""
        return None if self.token is None else self.token.get_secret_value()
