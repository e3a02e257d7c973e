"""Filter rules of lists and aliases (issue 11, part 2).

Revision ID: 0008_filter_rules
Revises: 0007_forward_style
Create Date: 2026-12-01

One table of rules, read for all of a message's recipients in one statement.  A held
message needs no table: it is a ``messages`` row whose status is ``held``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_filter_rules"
down_revision = "0007_forward_style"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "filter_rules",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("target", sa.String(320), nullable=False),
        sa.Column("condition", sa.String(16), nullable=False),
        sa.Column("header", sa.String(200), nullable=False, server_default=""),
        sa.Column("argument", sa.Text, nullable=False, server_default=""),
        sa.Column("action", sa.String(8), nullable=False),
        sa.Column("text", sa.String(500), nullable=False, server_default=""),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_filter_rules_target", "filter_rules", ["target", "id"])


def downgrade() -> None:
    op.drop_index("ix_filter_rules_target", "filter_rules")
    op.drop_table("filter_rules")
