"""``api_keys.seq``: the order keys were made in, on both engines (SQLite's ``rowid``
gave it before; PostgreSQL has none).

Existing keys are numbered in their ``rowid`` order on SQLite, by creation time then
id elsewhere.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add and fill ``seq``."""
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("seq", sa.BigInteger))
    if op.get_bind().dialect.name == "sqlite":
        op.execute("UPDATE api_keys SET seq = rowid")
    else:
        op.execute(
            "UPDATE api_keys SET seq = ranked.n FROM (SELECT key_id, row_number() OVER "
            "(ORDER BY created_at, key_id) AS n FROM api_keys) AS ranked "
            "WHERE api_keys.key_id = ranked.key_id"
        )


def downgrade() -> None:
    """Drop ``seq``."""
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("seq")
