"""SES notifications already taken (issue 13, part 1).

Revision ID: 0014_ses_ingress
Revises: 0013_ses_egress
Create Date: 2026-12-01

SNS retries a webhook delivery and SQS redelivers a message it saw no delete for, so the
same SES ``mail.messageId`` can arrive several times; one row per messageId taken (or
refused for good) makes the second arrival an acknowledgement without a second copy.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_ses_ingress"
down_revision = "0013_ses_egress"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ses_received",
        sa.Column("ses_message_id", sa.String(255), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("message_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("received_at", sa.Float, nullable=False),
    )
    op.create_index("ix_ses_received_at", "ses_received", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_ses_received_at", "ses_received")
    op.drop_table("ses_received")
