"""DKIM keys per domain (issue 12, part 9).

Revision ID: 0016_dkim_keys
Revises: 0015_operations
Create Date: 2026-12-01

One signing key per domain: the relay signs every copy of that domain's lists and
aliases with it.  A new key (``mailflow dkim keygen --replace``) replaces the row; its
selector differs, so the old DNS record can stay published while copies signed with
the old key are still on their way.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016_dkim_keys"
down_revision = "0015_operations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dkim_keys",
        sa.Column("domain", sa.String(253), primary_key=True),
        sa.Column("selector", sa.String(63), nullable=False),
        sa.Column("private_key", sa.Text, nullable=False),
        sa.Column("public_key", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("dkim_keys")
