"""When a list rewrites From: for DMARC (issue 12, part 6).

Revision ID: 0009_dmarc
Revises: 0008_filter_rules
Create Date: 2026-12-01

A column of ``lists`` with a default, so every existing list keeps the author's From:.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_dmarc"
down_revision = "0008_filter_rules"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lists") as batch:
        batch.add_column(sa.Column("dmarc", sa.String(8), nullable=False,
                                   server_default="never"))


def downgrade() -> None:
    with op.batch_alter_table("lists") as batch:
        batch.drop_column("dmarc")
