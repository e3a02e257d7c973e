"""Send pace shared by every relay of a store (issue 15, part 2).

Revision ID: 0021_scale
Revises: 0017_users
Create Date: 2026-12-01

One row per rate-limited route (Amazon SES's max send rate): the moment its reserved
sends are paid for.  Relays on several hosts reserve from it with one ``UPDATE …
RETURNING`` each, so their sum keeps the rate (``store/send_pace.py``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021_scale"
down_revision = "0020_ui_core"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "send_pace",
        sa.Column("route", sa.String(200), primary_key=True),
        sa.Column("paid_until", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("send_pace")
