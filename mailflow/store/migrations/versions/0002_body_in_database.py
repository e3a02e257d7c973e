"""Small message bodies stored in the blobs row itself.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

A body up to ``max_body_in_database`` bytes is written in the ingest transaction, so the
commit's one fsync makes both the rows and the content durable; larger bodies stay files.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("blobs") as batch:
        batch.add_column(sa.Column("content", sa.LargeBinary, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("blobs") as batch:
        batch.drop_column("content")
