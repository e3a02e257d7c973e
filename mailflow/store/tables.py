"""The relational schema, as SQLAlchemy Core tables shared by SQLite and PostgreSQL.

Timestamps are seconds since the epoch (double precision): cheap to compare and index on
both backends, and what the injected clock produces.  Alembic migrations in
``migrations/versions`` create exactly these tables; change both together.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)

metadata = MetaData()

# Key/value facts about this installation (instance id, schema notes).
meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

domains = Table(
    "domains",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(253), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
)

lists = Table(
    "lists",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("domain_id", Integer, ForeignKey("domains.id"), nullable=False, index=True),
    Column("address", String(320), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    Column("name", String(200), nullable=False, server_default=""),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("created_at", Float, nullable=False),
    Column("forward_style", String(8), nullable=False, server_default="resend"),
)

members = Table(
    "members",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("list_id", Integer, ForeignKey("lists.id", ondelete="CASCADE"), nullable=False),
    Column("address", String(320), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    # Display name; the directory refuses control characters and more than 200.
    Column("name", String(200), nullable=False, server_default=""),
    UniqueConstraint("list_id", "address", name="uq_members_list_address"),
)

blobs = Table(
    "blobs",
    metadata,
    Column("hash", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("refcount", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("released_at", Float, nullable=True),
    # The body itself when it is small (see ``max_body_in_database``); NULL: a file.
    Column("content", LargeBinary, nullable=True),
)

messages = Table(
    "messages",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("mail_from", String(320), nullable=False),
    Column("rcpt_tos", Text, nullable=False),  # newline-separated envelope recipients
    Column("blob", String(64), nullable=False),  # blobs.hash; no FK: GC may outlive rows
    Column("size", BigInteger, nullable=False),
    Column("received_at", Float, nullable=False),
    Column("peer", String(100), nullable=False, server_default=""),
    Column("helo", String(255), nullable=False, server_default=""),
    Column("protocol", String(16), nullable=False, server_default="ESMTP"),
    Column("status", String(16), nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_messages_status", "status"),
)

PENDING_SQL = "status IN ('queued', 'in_flight', 'deferred')"

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("message_id", String(32), ForeignKey("messages.id"), nullable=False),
    Column("list_id", Integer, nullable=False),
    Column("recipient", String(320), nullable=False),
    Column("status", String(16), nullable=False),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    # Next attempt time while queued/deferred; lease expiry while in flight.
    Column("due_at", Float, nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("last_reply", Text, nullable=True),
    Index("ix_deliveries_message", "message_id"),
    Index(
        "ix_deliveries_due",
        text("priority DESC"),
        "due_at",
        sqlite_where=text(PENDING_SQL),
        postgresql_where=text(PENDING_SQL),
    ),
)

events = Table(
    "events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("message_id", String(32), nullable=True, index=True),
    Column("delivery_id", BigInteger, nullable=True),
    Column("detail", Text, nullable=False, server_default=""),
)

# Block and allow entries for senders (``mailflow block``/``allow``), read once per
# sender by the accept chain.  ``target`` is '' for every recipient, a domain, or one
# list or alias address (not NULL: a unique constraint must see two global entries of
# one pattern as equal).  ``like_pattern`` is ``pattern`` as a SQL LIKE pattern
# (``*`` -> ``%``, ``?`` -> ``_``, escaped with ``\``): both backends match a sender
# against every entry in one statement.
sender_rules = Table(
    "sender_rules",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("action", String(8), nullable=False),
    Column("target", String(320), nullable=False, server_default=""),
    Column("pattern", String(320), nullable=False),
    Column("like_pattern", String(640), nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("target", "action", "pattern", name="uq_sender_rules_entry"),
)

# Out-of-office replies (``mailflow autoreply``): at most one per list or alias.
autoreplies = Table(
    "autoreplies",
    metadata,
    Column("list_id", Integer, ForeignKey("lists.id", ondelete="CASCADE"), primary_key=True),
    Column("subject", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("starts_at", Float, nullable=True),
    Column("ends_at", Float, nullable=True),
    Column("once_per_days", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
)

# When a list or alias last answered a sender (auto-reply or echo): RFC 3834's "at most
# one reply per sender per N days", kept across restarts.
autoreply_log = Table(
    "autoreply_log",
    metadata,
    Column("list_id", Integer, ForeignKey("lists.id", ondelete="CASCADE"), nullable=False),
    Column("sender", String(320), nullable=False),
    Column("replied_at", Float, nullable=False),
    UniqueConstraint("list_id", "sender", name="uq_autoreply_log_sender"),
)

# Filter rules of lists and aliases (``mailflow filter``), tried in ``id`` order; the
# accept chain reads those of all of a message's recipients in one statement.
filter_rules = Table(
    "filter_rules",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("target", String(320), nullable=False),
    Column("condition", String(16), nullable=False),
    Column("header", String(200), nullable=False, server_default=""),
    Column("argument", Text, nullable=False, server_default=""),
    Column("action", String(8), nullable=False),
    Column("text", String(500), nullable=False, server_default=""),
    Column("created_at", Float, nullable=False),
    Index("ix_filter_rules_target", "target", "id"),
)

# Who may use the API (issue 14): users with argon2 password hashes, their roles on
# lists (owner or moderator), API tokens (SHA-256 digests; no user: a site token),
# and the audit log of every change made through the API.
users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("password_hash", String(200), nullable=False),
    Column("is_admin", Boolean, nullable=False, server_default=false()),
    Column("created_at", Float, nullable=False),
)

list_roles = Table(
    "list_roles",
    metadata,
    Column("list_id", Integer, ForeignKey("lists.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("role", String(16), nullable=False),
    PrimaryKeyConstraint("list_id", "user_id", name="pk_list_roles"),
    Index("ix_list_roles_user", "user_id"),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("digest", String(64), nullable=False, unique=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=True),
    Column("scope", String(8), nullable=False),
    Column("label", String(200), nullable=False, server_default=""),
    Column("created_at", Float, nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("actor", String(320), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(320), nullable=False, server_default=""),
    Column("detail", Text, nullable=False, server_default=""),
)
