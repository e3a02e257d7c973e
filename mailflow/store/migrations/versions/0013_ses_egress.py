"""The provider's id of each sent copy (issue 13, part 5: Amazon SES egress).

Revision ID: 0013_ses_egress
Revises: 0012_bounces
Create Date: 2026-12-01

Amazon SES answers a send with its own MessageId, and every later word about that copy
(a bounce, a complaint or a delivery notification, a bounce mail from
``MAILER-DAEMON@amazonses.com``) names it, not ours.  So a delivery keeps the id its
provider gave it, indexed: one SES send covers up to 50 deliveries, found together.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_ses_egress"
down_revision = "0012_bounces"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("provider_message_id", sa.String(100), nullable=True))
    op.create_index("ix_deliveries_provider_message", "deliveries", ["provider_message_id"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_provider_message", "deliveries")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("provider_message_id")
