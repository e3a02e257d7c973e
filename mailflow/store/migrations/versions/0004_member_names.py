"""Members keep a display name (``member add --name``, the ``name`` column of an import).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

Empty for the members there are: nobody gave them one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("members") as batch:
        batch.add_column(sa.Column("name", sa.String(200), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("members") as batch:
        batch.drop_column("name")
