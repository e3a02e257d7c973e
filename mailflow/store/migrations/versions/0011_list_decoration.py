"""List headers and decoration: subject prefix, Reply-To, templates, archive (issue 12,
parts 4 and 5).

Revision ID: 0011_list_decoration
Revises: 0010_list_policy
Create Date: 2026-12-01

Columns of ``lists`` with defaults that decorate nothing, so existing lists send their
copies as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_list_decoration"
down_revision = "0010_list_policy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lists") as batch:
        batch.add_column(sa.Column("subject_prefix", sa.String(100), nullable=False,
                                   server_default=""))
        batch.add_column(sa.Column("reply_to", sa.String(320), nullable=False,
                                   server_default="none"))
        batch.add_column(sa.Column("header_template", sa.Text, nullable=False,
                                   server_default=""))
        batch.add_column(sa.Column("footer_template", sa.Text, nullable=False,
                                   server_default=""))
        batch.add_column(sa.Column("archive_url", sa.String(500), nullable=False,
                                   server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("lists") as batch:
        for column in ("archive_url", "footer_template", "header_template", "reply_to",
                       "subject_prefix"):
            batch.drop_column(column)
