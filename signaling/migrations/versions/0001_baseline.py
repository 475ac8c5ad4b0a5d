"""The schema of version 3 of the earlier SQLite-only store: files, uploads, api_keys.

Adopts a database made by earlier versions: on SQLite, a file at ``PRAGMA user_version``
1 or 2 is first brought to 3 by the statements those versions used; tables that exist
already are kept as they are (a version-3 file only gets Alembic's table). A new
database gets the three tables. ``user_version`` stays 3 on SQLite, so an earlier
server still opens the file.

Revision ID: 0001
Revises:
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

LEGACY_OWNER = ":legacy"
_V1 = (
    "job_id, file_path, file_size, sha256, mime_type, uploaded_at, downloaded_at, deleted, "
    "deleted_at"
)

# The statements of the earlier store's own migrations (PRAGMA user_version n-1 -> n).
_LEGACY_STEPS: dict[int, tuple[str, ...]] = {
    2: (
        """CREATE TABLE uploads (
            upload_id TEXT PRIMARY KEY, file_name TEXT NOT NULL, total_size INTEGER NOT NULL,
            user_id TEXT NOT NULL, user_role TEXT NOT NULL, content_type TEXT NOT NULL,
            chunk_size INTEGER NOT NULL, status TEXT NOT NULL, created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL, key TEXT UNIQUE, sha256 TEXT, file_path TEXT,
            mime_type TEXT, deleted INTEGER NOT NULL DEFAULT 0, deleted_at TEXT)""",
        "CREATE INDEX uploads_sha256 ON uploads (sha256, deleted)",
        "CREATE INDEX uploads_status ON uploads (status, updated_at)",
    ),
    3: (
        """CREATE TABLE files_v3 (
            owner TEXT NOT NULL, job_id TEXT NOT NULL, file_path TEXT NOT NULL,
            file_size INTEGER NOT NULL, sha256 TEXT NOT NULL,
            mime_type TEXT NOT NULL DEFAULT 'application/octet-stream',
            uploaded_at TEXT NOT NULL, downloaded_at TEXT, deleted INTEGER NOT NULL DEFAULT 0,
            deleted_at TEXT, PRIMARY KEY (owner, job_id))""",
        f"INSERT INTO files_v3 (owner, {_V1}) SELECT '{LEGACY_OWNER}', {_V1} FROM files",
        "DROP TABLE files",
        "ALTER TABLE files_v3 RENAME TO files",
        "CREATE INDEX files_sha256 ON files (sha256, deleted)",
        "CREATE INDEX files_job ON files (job_id)",
        f"ALTER TABLE uploads ADD COLUMN owner TEXT NOT NULL DEFAULT '{LEGACY_OWNER}'",
        "CREATE INDEX uploads_owner ON uploads (owner, status, updated_at)",
    ),
}


def _adopt_sqlite(bind: sa.engine.Connection) -> None:
    version = int(bind.exec_driver_sql("PRAGMA user_version").scalar() or 0)
    if version > 3:
        raise RuntimeError(f"the database has schema version {version}; this server knows 3")
    if 1 <= version < 3:
        for step in range(version + 1, 4):
            for statement in _LEGACY_STEPS[step]:
                bind.exec_driver_sql(statement)
    bind.exec_driver_sql("PRAGMA user_version = 3")


def upgrade() -> None:
    """Create the missing tables (after bringing an earlier SQLite file to version 3)."""
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        _adopt_sqlite(bind)
    present = set(sa.inspect(bind).get_table_names())
    if "files" not in present:
        op.create_table(
            "files",
            sa.Column("owner", sa.Text, primary_key=True),
            sa.Column("job_id", sa.Text, primary_key=True),
            sa.Column("file_path", sa.Text, nullable=False),
            sa.Column("file_size", sa.BigInteger, nullable=False),
            sa.Column("sha256", sa.Text, nullable=False),
            sa.Column(
                "mime_type", sa.Text, nullable=False, server_default="application/octet-stream"
            ),
            sa.Column("uploaded_at", sa.Text, nullable=False),
            sa.Column("downloaded_at", sa.Text),
            sa.Column("deleted", sa.Integer, nullable=False, server_default=sa.text("0")),
            sa.Column("deleted_at", sa.Text),
        )
        op.create_index("files_sha256", "files", ["sha256", "deleted"])
        op.create_index("files_job", "files", ["job_id"])
    if "uploads" not in present:
        op.create_table(
            "uploads",
            sa.Column("upload_id", sa.Text, primary_key=True),
            sa.Column("file_name", sa.Text, nullable=False),
            sa.Column("total_size", sa.BigInteger, nullable=False),
            sa.Column("user_id", sa.Text, nullable=False),
            sa.Column("user_role", sa.Text, nullable=False),
            sa.Column("content_type", sa.Text, nullable=False),
            sa.Column("chunk_size", sa.BigInteger, nullable=False),
            sa.Column("status", sa.Text, nullable=False),
            sa.Column("created_at", sa.Text, nullable=False),
            sa.Column("updated_at", sa.Text, nullable=False),
            sa.Column("key", sa.Text, unique=True),
            sa.Column("sha256", sa.Text),
            sa.Column("file_path", sa.Text),
            sa.Column("mime_type", sa.Text),
            sa.Column("deleted", sa.Integer, nullable=False, server_default=sa.text("0")),
            sa.Column("deleted_at", sa.Text),
            sa.Column("owner", sa.Text, nullable=False, server_default=LEGACY_OWNER),
        )
        op.create_index("uploads_sha256", "uploads", ["sha256", "deleted"])
        op.create_index("uploads_status", "uploads", ["status", "updated_at"])
        op.create_index("uploads_owner", "uploads", ["owner", "status", "updated_at"])
    if "api_keys" not in present:
        op.create_table(
            "api_keys",
            sa.Column("key_id", sa.Text, primary_key=True),
            sa.Column("key_hash", sa.Text, nullable=False),
            sa.Column("role", sa.Text, nullable=False),
            sa.Column("name", sa.Text, nullable=False),
            sa.Column("principal", sa.Text, nullable=False),
            sa.Column("created_at", sa.Text, nullable=False),
            sa.Column("revoked_at", sa.Text),
        )


def downgrade() -> None:
    """Drop the tables (every record is lost)."""
    for table in ("api_keys", "uploads", "files"):
        op.drop_table(table)
