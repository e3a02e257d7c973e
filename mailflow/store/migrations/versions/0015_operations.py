"""Message trace by Message-ID (issue 15, part 3).

Revision ID: 0015_operations
Revises: 0014_ses_ingress
Create Date: 2026-12-01

The message row keeps the Message-ID header field's value (``header_id``), indexed, so
``mailflow trace <Message-ID>`` finds a message without reading bodies.  It is written
by the ingest's existing message insert: no statement of its own.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_operations"
down_revision = "0014_ses_ingress"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("header_id", sa.String(255), nullable=False,
                                        server_default=""))
    op.create_index("ix_messages_header_id", "messages", ["header_id"])


def downgrade() -> None:
    op.drop_index("ix_messages_header_id", "messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("header_id")
