"""Sender block and allow entries (issue 11, part 1: wildcard blocklists).

Revision ID: 0003_sender_rules
Revises: 0002
Create Date: 2026-12-01

One table for both kinds of entry at every scope: the accept chain asks which entries
match one sender, for all of a message's recipients, in one statement.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_sender_rules"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sender_rules",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("action", sa.String(8), nullable=False),
        sa.Column("target", sa.String(320), nullable=False, server_default=""),
        sa.Column("pattern", sa.String(320), nullable=False),
        sa.Column("like_pattern", sa.String(640), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("target", "action", "pattern", name="uq_sender_rules_entry"),
    )


def downgrade() -> None:
    op.drop_table("sender_rules")
