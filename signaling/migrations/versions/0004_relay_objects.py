"""``uploads.relay``: 1 for a relay object (a tus upload created with the ``relay``
metadata key, read with a relay token at ``/relay/{upload_id}`` until it expires), 0
for any other upload; and the index ``uploads_relay (relay, status, updated_at)`` the
cleanup's query of expired relay objects runs on
(:meth:`signaling.db_uploads.UploadQueries.expired_relay_objects`).

Earlier rows get 0 (no upload was a relay object before). A column or an index already
there is kept (as revision 0003 does).

The downgrade removes the record of every relay object (completed or not) before it
drops the column: the earlier schema cannot tell one from a plain upload, so a relay
object left there would outlive its expiry as a completed upload of its principal. Their
blobs and unfinished parts stay for the store's cleanup, which removes a blob no record
uses and an upload folder without a record on its next pass.

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

INDEX = "uploads_relay"
"""The index of the cleanup's query: ``relay = 1 AND status = 'completed' AND
updated_at < cutoff``."""


def upgrade() -> None:
    """Add ``relay`` (integer 0 or 1, not null, default 0) and :data:`INDEX` unless
    present."""
    inspector = sa.inspect(op.get_bind())
    present = {column["name"] for column in inspector.get_columns("uploads")}
    if "relay" not in present:
        with op.batch_alter_table("uploads") as batch:
            batch.add_column(
                sa.Column("relay", sa.Integer, nullable=False, server_default=sa.text("0"))
            )
    if INDEX not in {index["name"] for index in inspector.get_indexes("uploads")}:
        op.create_index(INDEX, "uploads", ["relay", "status", "updated_at"])


def downgrade() -> None:
    """Remove the relay objects' records (their blobs and parts are left to the store's
    cleanup), then drop :data:`INDEX` and ``relay``."""
    op.execute(sa.text("DELETE FROM uploads WHERE relay = 1"))
    op.drop_index(INDEX, table_name="uploads")
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("relay")
