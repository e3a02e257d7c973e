"""Web UI sessions (issue 14, part 3).

Revision ID: 0020_ui_core
Revises: 0017_users
Create Date: 2026-12-01

A session is a random secret in an HttpOnly cookie, stored here only as its SHA-256
digest (as API tokens are): a copy of this table logs nobody in.  ``expires_at`` bounds
a session's life whatever the browser keeps.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020_ui_core"
down_revision = "0019_subs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ui_sessions",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_ui_sessions_user", "ui_sessions", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_ui_sessions_user", "ui_sessions")
    op.drop_table("ui_sessions")
