"""Posting policy and moderation of lists (issue 12, parts 1 and 2).

Revision ID: 0010_list_policy
Revises: 0009_dmarc
Create Date: 2026-12-01

Members get a role, lists a posting policy, a non-member action and how long a held
post is kept; ``held_posts`` records each held post the moderators were told about.
Existing lists stay open and existing members plain members: nothing changes for them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_list_policy"
down_revision = "0009_dmarc"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lists") as batch:
        batch.add_column(sa.Column("posting", sa.String(16), nullable=False,
                                   server_default="open"))
        batch.add_column(sa.Column("non_member_action", sa.String(8), nullable=False,
                                   server_default="reject"))
        batch.add_column(sa.Column("hold_days", sa.Integer, nullable=False,
                                   server_default="14"))
    with op.batch_alter_table("members") as batch:
        batch.add_column(sa.Column("role", sa.String(16), nullable=False,
                                   server_default="member"))
    op.create_table(
        "held_posts",
        sa.Column("message_id", sa.String(32), primary_key=True),
        sa.Column("list_id", sa.Integer, primary_key=True),
        sa.Column("author", sa.String(320), nullable=False, server_default=""),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_held_posts_expires", "held_posts", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_held_posts_expires", "held_posts")
    op.drop_table("held_posts")
    with op.batch_alter_table("members") as batch:
        batch.drop_column("role")
    with op.batch_alter_table("lists") as batch:
        batch.drop_column("hold_days")
        batch.drop_column("non_member_action")
        batch.drop_column("posting")
