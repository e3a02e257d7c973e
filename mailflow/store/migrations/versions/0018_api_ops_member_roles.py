"""One source of truth for who owns or moderates a list: the roster (issue 14, part 1).

Revision ID: 0018_api_ops  (branch api-ops: Alembic allows no "-" in an id)
Revises: 0017_users
Create Date: 2026-12-01

A user is owner or moderator of a list when the list's roster has the user's address
with that role (``members.role``); ``list_roles`` goes.  Each of its rows moves to the
roster: a member already there takes the role (the higher of the two: owner, then
moderator); an address that was not a member is added *disabled* with no
``disabled_at`` -- on the roster, receiving nothing, untouched by bounce upkeep -- so
nobody starts getting a list's mail because they could manage it over the API.

A partial index on the owners' and moderators' addresses keeps the check of each API
request one small indexed read, whatever the size of the rosters.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0018_api_ops"
down_revision = "0017_users"
branch_labels = None
depends_on = None

STAFF = "role IN ('owner', 'moderator')"  # as tables.STAFF_ROLES, word for word


def upgrade() -> None:
    op.execute("""
        UPDATE members SET role = (
            SELECT lr.role FROM list_roles lr JOIN users u ON u.id = lr.user_id
            WHERE lr.list_id = members.list_id AND u.email = members.address)
        WHERE EXISTS (
            SELECT 1 FROM list_roles lr JOIN users u ON u.id = lr.user_id
            WHERE lr.list_id = members.list_id AND u.email = members.address
              AND (members.role = 'member'
                   OR (members.role = 'moderator' AND lr.role = 'owner')))
    """)
    op.get_bind().execute(sa.text("""
        INSERT INTO members (list_id, address, status, created_at, name, role)
        SELECT lr.list_id, u.email, 'disabled', :now, '', lr.role
        FROM list_roles lr JOIN users u ON u.id = lr.user_id
        WHERE NOT EXISTS (SELECT 1 FROM members m
                          WHERE m.list_id = lr.list_id AND m.address = u.email)
    """), {"now": time.time()})
    op.drop_index("ix_list_roles_user", "list_roles")
    op.drop_table("list_roles")
    op.create_index("ix_members_staff", "members", ["address"],
                    sqlite_where=sa.text(STAFF), postgresql_where=sa.text(STAFF))


def downgrade() -> None:
    op.drop_index("ix_members_staff", "members")
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
    op.execute(f"""
        INSERT INTO list_roles (list_id, user_id, role)
        SELECT m.list_id, u.id, m.role FROM members m JOIN users u ON u.email = m.address
        WHERE m.{STAFF}
    """)
