"""Joins the two migrations made side by side on 0017_users: the roster's staff roles
(0018_api_ops) and the web UI's sessions (0018_ui_core).  Nothing to change: each
touches tables the other does not.

Revision ID: 0019_ui_ops
Revises: 0018_api_ops, 0018_ui_core
Create Date: 2026-12-01
"""

from __future__ import annotations

revision = "0019_ui_ops"
down_revision = ("0018_api_ops", "0018_ui_core")
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing: a join of two branches."""


def downgrade() -> None:
    """Nothing: a join of two branches."""
