"""How an alias forwards: resend (as received) or fwd (issue 11, part 3).

Revision ID: 0007_forward_style
Revises: 0006_autoreply
Create Date: 2026-12-01

A column of ``lists`` with a default, so every existing list and alias keeps resending.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_forward_style"
down_revision = "0006_autoreply"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lists") as batch:
        batch.add_column(sa.Column("forward_style", sa.String(8), nullable=False,
                                   server_default="resend"))


def downgrade() -> None:
    with op.batch_alter_table("lists") as batch:
        batch.drop_column("forward_style")
