"""Addresses with an internationalised domain in one form: the domain's A-labels.

Revision ID: 0004_idn_addresses
Revises: 0003_sender_rules
Create Date: 2026-12-01

Every ingress now looks addresses up with the domain in IDNA 2008 A-labels
(``mailflow.addresses.canonical``).  Domains were always stored so, and so were addresses
with an ASCII local part; an address with a non-ASCII local part kept its domain in
Unicode (``ünï@ünïcode.example``), so a list of such an address would no longer be found.
Those rows are rewritten in the one form.  A member row that would then duplicate one
already on its list is the same mailbox: the Unicode spelling is removed.  Nothing to undo
on downgrade: the A-label form is valid for every version.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from mailflow.addresses import canonical

revision = "0004_idn_addresses"
down_revision = "0003_sender_rules"
branch_labels = None
depends_on = None

BATCH = 10_000


def upgrade() -> None:
    conn = op.get_bind()
    lists = sa.table("lists", sa.column("id", sa.Integer), sa.column("address", sa.String))
    for row_id, address in _to_rewrite(conn, lists):
        conn.execute(sa.update(lists).where(lists.c.id == row_id)
                     .values(address=canonical(address)))
    members = sa.table("members", sa.column("id", sa.Integer),
                       sa.column("list_id", sa.Integer), sa.column("address", sa.String))
    for row_id, address in _to_rewrite(conn, members):
        list_id = conn.scalar(sa.select(members.c.list_id).where(members.c.id == row_id))
        taken = conn.scalar(sa.select(members.c.id).where(
            members.c.list_id == list_id, members.c.address == canonical(address)))
        if taken is None:
            conn.execute(sa.update(members).where(members.c.id == row_id)
                         .values(address=canonical(address)))
        else:
            conn.execute(sa.delete(members).where(members.c.id == row_id))


def _to_rewrite(conn: sa.Connection, table: sa.TableClause) -> list[tuple[int, str]]:
    """(id, address) of the rows not in canonical form; only non-ASCII ones can be."""
    found: list[tuple[int, str]] = []
    last = 0
    while True:
        rows = conn.execute(sa.select(table.c.id, table.c.address)
                            .where(table.c.id > last).order_by(table.c.id).limit(BATCH)).all()
        if not rows:
            return found
        found += [(row.id, row.address) for row in rows
                  if not row.address.isascii() and canonical(row.address) != row.address]
        last = rows[-1].id


def downgrade() -> None:
    pass
