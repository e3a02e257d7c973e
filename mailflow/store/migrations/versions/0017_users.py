"""Users, their roles on lists, API tokens and the audit log (issue 14, part 2).

Revision ID: 0017_users
Revises: 0016_dkim_keys
Create Date: 2026-12-01

``list_roles`` says who owns or moderates which list; it is its own small table so
that the members' ``role`` column (issue 13) can feed it later without a rewrite.
Tokens are stored as SHA-256 digests: a token is 32 random bytes, so a slow hash buys
nothing, and a digest lookup is one indexed read per request.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017_users"
down_revision = "0016_dkim_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(320), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("is_admin", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "list_roles",
        sa.Column("list_id", sa.Integer, sa.ForeignKey("lists.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("list_id", "user_id", name="pk_list_roles"),
    )
    op.create_index("ix_list_roles_user", "list_roles", ["user_id"])
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
                  nullable=True),
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("label", sa.String(200), nullable=False, server_default=""),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("actor", sa.String(320), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(320), nullable=False, server_default=""),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
    )


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_table("api_tokens")
    op.drop_index("ix_list_roles_user", "list_roles")
    op.drop_table("list_roles")
    op.drop_table("users")
