"""Settings of the storage service beside signaling (results, resumable uploads, tus):
its folder, its database, its blob backend, its admin key, its limits and quotas.

:class:`StorageSettings` is the base of :class:`signaling.config.SignalingSettings`: the
storage fields are the same flags and variables of ``rtc-signaling``, kept in a model of
their own (the README's storage table is generated from it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from rtc_worker.settings_sources import Env, EnvSettings, empty_is_none, load_secret_files

__all__ = [
    "DATABASE_URL_SCHEMES",
    "DEFAULT_CLEANUP_INTERVAL_S",
    "DEFAULT_DATABASE_RESERVE_BYTES",
    "DEFAULT_DISK_RESERVE_BYTES",
    "DEFAULT_DOWNLOAD_TOKEN_TTL_S",
    "DEFAULT_RELAY_TTL_S",
    "DEFAULT_STORAGE_MAX_FILE_SIZE",
    "DEFAULT_TUS_IDLE_TIMEOUT_S",
    "DEFAULT_TUS_PATCH_DEADLINE_S",
    "DEFAULT_UPLOAD_CHUNK_SIZE",
    "DEFAULT_UPLOAD_QUOTA_BYTES",
    "DEFAULT_UPLOAD_QUOTA_COUNT",
    "DEFAULT_UPLOAD_TTL_S",
    "StorageSettings",
]

DEFAULT_STORAGE_MAX_FILE_SIZE = 10 * 1024**3
"""Default largest upload accepted by the result store, in bytes (10 GiB)."""

DEFAULT_UPLOAD_CHUNK_SIZE = 8 * 1024**2
"""Default chunk size of resumable uploads, in bytes (8 MiB)."""

DEFAULT_UPLOAD_TTL_S = 24 * 3600.0
"""Default age after which an unfinished upload is removed, in seconds (24 h)."""

DEFAULT_CLEANUP_INTERVAL_S = 3600.0
"""Default interval between two cleanup passes, in seconds (1 h)."""

DATABASE_URL_SCHEMES = ("sqlite:///", "postgresql://", "postgres://", "postgresql+asyncpg://")
"""How a ``database_url`` may start (SQLite file, PostgreSQL server)."""

DEFAULT_DOWNLOAD_TOKEN_TTL_S = 7 * 24 * 3600.0
"""Default lifetime of a download token, in seconds (7 days)."""

DEFAULT_RELAY_TTL_S = 6 * 3600.0
"""Default lifetime of a relay object after its upload completed, in seconds (6 h)."""

DEFAULT_DISK_RESERVE_BYTES = 1024**3
"""Default free space uploads must leave on the storage disk, in bytes (1 GiB)."""

DEFAULT_DATABASE_RESERVE_BYTES = 8 * 1024**2
"""Default size of the database's reserve file, in bytes (8 MiB)."""

DEFAULT_UPLOAD_QUOTA_BYTES = 20 * 1024**3
"""Default announced bytes of open resumable uploads per principal, in bytes (20 GiB)."""

DEFAULT_UPLOAD_QUOTA_COUNT = 16
"""Default number of open resumable uploads per principal."""

DEFAULT_TUS_IDLE_TIMEOUT_S = 60.0
"""Default longest wait for the next bytes of a tus PATCH body, seconds (1 min)."""

DEFAULT_TUS_PATCH_DEADLINE_S = 3600.0
"""Default longest time one tus PATCH body may take, seconds (1 h)."""


class StorageSettings(EnvSettings):
    """The storage service's settings (see the module docstring).

    The store is on when ``storage_path`` is set, and then it needs an API key.

    Raises:
        pydantic.ValidationError: when a value is out of range or malformed, or when
            storage is enabled without an API key.
    """

    model_config = SettingsConfigDict(
        env_prefix="RTC_SIGNALING_", populate_by_name=True, extra="ignore"
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
    relay_ttl_s: float = Field(
        DEFAULT_RELAY_TTL_S,
        gt=0,
        description="Lifetime of a relay object (a tus upload with the relay metadata key) "
        "after its upload completed, seconds: its relay token then expires and the cleanup "
        "removes it (its blob too, unless another record uses it). Until then it counts "
        "against its principal's upload quota.",
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
    # The deadlines of one tus PATCH body (a stalled or slow client holds an upload's lock)
    tus_idle_timeout_s: float = Field(
        DEFAULT_TUS_IDLE_TIMEOUT_S,
        gt=0,
        le=24 * 3600,
        description="Longest wait for the next bytes of a tus PATCH (or creation-with-upload) "
        "body, seconds: a body silent longer ends with 408 REQUEST_TIMEOUT, what arrived is "
        "kept (unless a checksum was sent) and the upload's lock is freed.",
    )
    tus_patch_deadline_s: float = Field(
        DEFAULT_TUS_PATCH_DEADLINE_S,
        gt=0,
        le=7 * 24 * 3600,
        description="Longest time one tus PATCH body may take in all, seconds: past it the "
        "request ends with 408 REQUEST_TIMEOUT (what arrived is kept, the client resumes).",
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

    @field_validator("storage_api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        return None if value is None or value == "" else value

    _empty_path_is_none = field_validator("storage_path", "database_path", mode="before")(
        empty_is_none
    )
    _empty_s3_is_none = field_validator("s3_endpoint_url", "s3_bucket", mode="before")(
        empty_is_none
    )

    @model_validator(mode="after")
    def _storage_needs_key(self) -> Self:
        load_secret_files(self, [("storage_api_key", "api_key_file", "API key")])
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
    def storage_api_key_value(self) -> str | None:
        """The storage API key as plain text, or ``None`` when none is set."""
        return None if self.storage_api_key is None else self.storage_api_key.get_secret_value()
