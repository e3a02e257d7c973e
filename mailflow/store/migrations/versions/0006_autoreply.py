"""Out-of-office replies and their per-sender log (issue 11, parts 4 and 5).

Revision ID: 0006_autoreply
Revises: 0005_member_names
Create Date: 2026-12-01

The log keeps "one reply per sender per N days" (RFC 3834) across restarts.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_autoreply"
down_revision = "0005_member_names"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "autoreplies",
        sa.Column("list_id", sa.Integer, sa.ForeignKey("lists.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("starts_at", sa.Float, nullable=True),
        sa.Column("ends_at", sa.Float, nullable=True),
        sa.Column("once_per_days", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "autoreply_log",
        sa.Column("list_id", sa.Integer, sa.ForeignKey("lists.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("sender", sa.String(320), nullable=False),
        sa.Column("replied_at", sa.Float, nullable=False),
        sa.UniqueConstraint("list_id", "sender", name="uq_autoreply_log_sender"),
    )


def downgrade() -> None:
    op.drop_table("autoreply_log")
    op.drop_table("autoreplies")
