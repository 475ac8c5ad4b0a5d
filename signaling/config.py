"""Settings of the signaling server, read from init kwargs, then the environment.

Environment variables:

========================================  =========================================
``RTC_SIGNALING_HOST``                    interface to bind (default ``127.0.0.1``)
``RTC_SIGNALING_PORT``                    TCP port (default ``8765``; ``0`` = any free)
``RTC_SIGNALING_TOKEN``                   shared token peers must present (default none)
``RTC_SIGNALING_MAX_FRAME_BYTES``         soft frame limit in bytes (default 262144)
``RTC_SIGNALING_HEARTBEAT_SECONDS``       WebSocket ping interval in seconds (default 20)
``RTC_LOG_LEVEL``                         loguru level name (default ``INFO``)
========================================  =========================================
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from protocol.signaling import DEFAULT_MAX_FRAME_BYTES

__all__ = ["LOG_LEVELS", "MIN_HARD_FRAME_BYTES", "SignalingSettings"]

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

    Raises:
        pydantic.ValidationError: when a value is out of range or malformed.
    """

    model_config = SettingsConfigDict(
        env_prefix="RTC_SIGNALING_",
        populate_by_name=True,
        extra="ignore",
    )

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8765
    token: SecretStr | None = None
    max_frame_bytes: Annotated[int, Field(ge=256, le=64 * 1024 * 1024)] = DEFAULT_MAX_FRAME_BYTES
    heartbeat_seconds: Annotated[float, Field(gt=0, le=3600)] = 20.0
    log_level: str = Field(default="INFO", validation_alias="RTC_LOG_LEVEL")

    @field_validator("token", mode="before")
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
