"""``uploads.result_owner`` and ``uploads.result_job_id``: the result a tus upload is
also stored as, in columns of their own (``user_id`` and ``user_role`` are the
uploader's labels only).

Earlier rows get ``NULL`` in both (no upload was stored as a result before tus). A
column already there is kept (as revision 0001 keeps tables: a file rolled back by hand
to an earlier ``user_version`` may hold them).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


_COLUMNS = ("result_owner", "result_job_id")


def upgrade() -> None:
    """Add the two nullable columns (those missing)."""
    present = {column["name"] for column in sa.inspect(op.get_bind()).get_columns("uploads")}
    missing = [name for name in _COLUMNS if name not in present]
    if missing:
        with op.batch_alter_table("uploads") as batch:
            for name in missing:
                batch.add_column(sa.Column(name, sa.Text))


def downgrade() -> None:
    """Drop the two columns (a pending result upload then completes as a plain one)."""
    with op.batch_alter_table("uploads") as batch:
        for name in reversed(_COLUMNS):
            batch.drop_column(name)
