"""Personalization, VERP and bounce processing (issue 12, parts 7 and 8).

Revision ID: 0012_bounces
Revises: 0011_list_decoration
Create Date: 2026-12-01

Lists get ``personalize`` and ``bounce_threshold``; members their bounce state (score,
last bounce, when disabled, warnings sent); two tables: ``bounce_events`` (every bounce
or complaint counted against a member, for ``mailflow bounces ls``) and
``suppressions`` (addresses no send reaches, globally or for one list).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_bounces"
down_revision = "0011_list_decoration"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE ADD COLUMN (a batch would copy ``lists`` on SQLite, and
    # dropping the old table would cascade to the members).
    op.add_column("lists", sa.Column("personalize", sa.Boolean, nullable=False,
                                     server_default="0"))
    op.add_column("lists", sa.Column("bounce_threshold", sa.Float, nullable=False,
                                     server_default="5"))
    with op.batch_alter_table("members") as batch:
        batch.add_column(sa.Column("bounce_score", sa.Float, nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("last_bounce_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("disabled_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("warnings_sent", sa.Integer, nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("last_warning_at", sa.Float, nullable=True))
    op.create_table(
        "bounce_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("list_id", sa.Integer, nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("counted", sa.Boolean, nullable=False),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_bounce_events_list", "bounce_events", ["list_id", "created_at"])
    op.create_table(
        "suppressions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("target", sa.String(320), nullable=False, server_default=""),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False, server_default=""),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("address", "target", name="uq_suppressions_entry"),
    )


def downgrade() -> None:
    op.drop_table("suppressions")
    op.drop_index("ix_bounce_events_list", "bounce_events")
    op.drop_table("bounce_events")
    with op.batch_alter_table("members") as batch:
        for column in ("last_warning_at", "warnings_sent", "disabled_at", "last_bounce_at",
                       "bounce_score"):
            batch.drop_column(column)
    with op.batch_alter_table("lists") as batch:
        batch.drop_column("bounce_threshold")
        batch.drop_column("personalize")
