"""Subscriptions by mail and on the list's page (issue 12, part 3).

Revision ID: 0019_subs
Revises: 0017_users
Create Date: 2026-12-01

Lists get their subscription policy and their welcome and goodbye templates; two small
tables: ``subscription_requests`` (requests to join an ``approve`` list, until an owner
decides) and ``command_replies`` (replies to list commands per address and day, the
bound on what a forged sender can make the relay send).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019_subs"
down_revision = "0018_api_ops"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE ADD COLUMN: a batch would copy ``lists`` on SQLite.
    op.add_column("lists", sa.Column("subscription", sa.String(16), nullable=False,
                                     server_default="confirm"))
    op.add_column("lists", sa.Column("welcome_template", sa.Text, nullable=False,
                                     server_default=""))
    op.add_column("lists", sa.Column("goodbye_template", sa.Text, nullable=False,
                                     server_default=""))
    op.create_table(
        "subscription_requests",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("list_id", sa.Integer, sa.ForeignKey("lists.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("list_id", "address", name="uq_subscription_requests_entry"),
    )
    op.create_table(
        "command_replies",
        sa.Column("address", sa.String(320), primary_key=True),
        sa.Column("window_start", sa.Float, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
    )
    op.create_index("ix_command_replies_window_start", "command_replies", ["window_start"])


def downgrade() -> None:
    op.drop_index("ix_command_replies_window_start", "command_replies")
    op.drop_table("command_replies")
    op.drop_table("subscription_requests")
    with op.batch_alter_table("lists") as batch:
        for column in ("goodbye_template", "welcome_template", "subscription"):
            batch.drop_column(column)
