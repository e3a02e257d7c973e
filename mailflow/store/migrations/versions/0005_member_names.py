"""Members keep a display name (``member add --name``, the ``name`` column of an import).

Revision ID: 0005_member_names
Revises: 0004_idn_addresses
Create Date: 2026-12-01

Empty for the members there are: nobody gave them one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_member_names"
down_revision = "0004_idn_addresses"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("members") as batch:
        batch.add_column(sa.Column("name", sa.String(200), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("members") as batch:
        batch.drop_column("name")
