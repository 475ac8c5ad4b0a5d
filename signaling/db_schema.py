"""The storage service's tables as SQLAlchemy Core objects (the queries' vocabulary).

The migrations in ``signaling/migrations/versions`` create and change these tables;
this module describes the newest schema for the queries (:mod:`signaling.db`,
:mod:`signaling.db_uploads`, :mod:`signaling.keys`). Times are ISO 8601 UTC text at
second precision (``2026-01-02T03:04:05Z``), so they compare as strings on both
engines; ``deleted`` is an integer 0 or 1; sizes are bytes (64-bit).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, Table, Text, text

__all__ = ["UNFINISHED", "api_keys", "files", "metadata", "uploads"]

UNFINISHED = ("initiated", "in_progress")
"""The ``status`` values of an upload not yet completed nor cancelled."""

metadata = MetaData()
"""The tables below."""

files = Table(
    "files",
    metadata,
    Column("owner", Text, primary_key=True),
    Column("job_id", Text, primary_key=True),
    Column("file_path", Text, nullable=False),
    Column("file_size", BigInteger, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("mime_type", Text, nullable=False, server_default="application/octet-stream"),
    Column("uploaded_at", Text, nullable=False),
    Column("downloaded_at", Text),
    Column("deleted", Integer, nullable=False, server_default=text("0")),
    Column("deleted_at", Text),
    Index("files_sha256", "sha256", "deleted"),
    Index("files_job", "job_id"),
)
"""One stored result per ``(owner, job_id)``."""

uploads = Table(
    "uploads",
    metadata,
    Column("upload_id", Text, primary_key=True),
    Column("file_name", Text, nullable=False),
    Column("total_size", BigInteger, nullable=False),
    Column("user_id", Text, nullable=False),
    Column("user_role", Text, nullable=False),
    Column("content_type", Text, nullable=False),
    Column("chunk_size", BigInteger, nullable=False),
    Column("status", Text, nullable=False),
    Column("created_at", Text, nullable=False),
    Column("updated_at", Text, nullable=False),
    Column("key", Text, unique=True),
    Column("sha256", Text),
    Column("file_path", Text),
    Column("mime_type", Text),
    Column("deleted", Integer, nullable=False, server_default=text("0")),
    Column("deleted_at", Text),
    Column("owner", Text, nullable=False),
    Column("result_owner", Text),
    Column("result_job_id", Text),
    Column("relay", Integer, nullable=False, server_default=text("0")),
    Index("uploads_sha256", "sha256", "deleted"),
    Index("uploads_status", "status", "updated_at"),
    Index("uploads_owner", "owner", "status", "updated_at"),
    Index("uploads_relay", "relay", "status", "updated_at"),
)
"""One resumable upload per ``upload_id``; ``result_owner`` and ``result_job_id`` are set
(both) when its content is also stored as that owner's result of the job (tus); ``relay``
is 1 for a relay object (:mod:`signaling.relay_routes`)."""

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", Text, primary_key=True),
    Column("key_hash", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("principal", Text, nullable=False),
    Column("created_at", Text, nullable=False),
    Column("revoked_at", Text),
    Column("seq", BigInteger),
)
"""The hashed API keys; ``seq`` orders them as they were made."""
