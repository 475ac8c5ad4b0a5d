"""``uploads.result_owner`` and ``uploads.result_job_id``: the result a tus upload is
also stored as, in columns of their own (``user_id`` and ``user_role`` are the
uploader's labels only).

Earlier rows get ``NULL`` in both (no upload was stored as a result before tus).

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


def upgrade() -> None:
    """Add the two nullable columns."""
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("result_owner", sa.Text))
        batch.add_column(sa.Column("result_job_id", sa.Text))


def downgrade() -> None:
    """Drop the two columns (a pending result upload then completes as a plain one)."""
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("result_job_id")
        batch.drop_column("result_owner")
