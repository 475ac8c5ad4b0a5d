"""``uploads.relay``: 1 for a relay object (a tus upload created with the ``relay``
metadata key, read with a relay token at ``/relay/{upload_id}`` until it expires), 0
for any other upload.

Earlier rows get 0 (no upload was a relay object before). A column already there is
kept (as revision 0003 does).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``relay`` (integer 0 or 1, not null, default 0) unless present."""
    present = {column["name"] for column in sa.inspect(op.get_bind()).get_columns("uploads")}
    if "relay" not in present:
        with op.batch_alter_table("uploads") as batch:
            batch.add_column(
                sa.Column("relay", sa.Integer, nullable=False, server_default=sa.text("0"))
            )


def downgrade() -> None:
    """Drop ``relay`` (a relay object left then stays as a plain completed upload)."""
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("relay")
