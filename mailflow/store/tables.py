"""The relational schema, as SQLAlchemy Core tables shared by SQLite and PostgreSQL.

Timestamps are seconds since the epoch (double precision): cheap to compare and index on
both backends, and what the injected clock produces.  Alembic migrations in
``migrations/versions`` create exactly these tables; change both together.
"""

from __future__ import annotations

from typing import Final

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
    Column("dmarc", String(8), nullable=False, server_default="never"),
    # Posting policy and moderation (``mailflow list update --posting ...``).
    Column("posting", String(16), nullable=False, server_default="open"),
    Column("non_member_action", String(8), nullable=False, server_default="reject"),
    Column("hold_days", Integer, nullable=False, server_default="14"),
    # Decoration of the list's copies (0010_list_decoration; model.Decoration).
    Column("subject_prefix", String(100), nullable=False, server_default=""),
    Column("reply_to", String(320), nullable=False, server_default="none"),
    Column("header_template", Text, nullable=False, server_default=""),
    Column("footer_template", Text, nullable=False, server_default=""),
    Column("archive_url", String(500), nullable=False, server_default=""),
    # One copy per member with a VERP envelope sender (``mailflow list update --personalize``).
    Column("personalize", Boolean, nullable=False, server_default="0"),
    # The bounce score at which a member is disabled (``--bounce-threshold``).
    Column("bounce_threshold", Float, nullable=False, server_default="5"),
)

# The roles that may manage a list over the API; ``ix_members_staff``'s condition, which
# a query must repeat word for word for SQLite to use the index.
STAFF_ROLES: Final = "role IN ('owner', 'moderator')"

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
    Column("role", String(16), nullable=False, server_default="member"),
    # Bounce processing (``mailflow/bounce_score.py``): the score and when it last rose,
    # when the member was disabled for bouncing, and the warnings sent since.
    Column("bounce_score", Float, nullable=False, server_default="0"),
    Column("last_bounce_at", Float, nullable=True),
    Column("disabled_at", Float, nullable=True),
    Column("warnings_sent", Integer, nullable=False, server_default="0"),
    Column("last_warning_at", Float, nullable=True),
    UniqueConstraint("list_id", "address", name="uq_members_list_address"),
    # The owners and moderators by address: the API's check of a user's lists.
    Index("ix_members_staff", "address", sqlite_where=text(STAFF_ROLES),
          postgresql_where=text(STAFF_ROLES)),
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
    # The Message-ID header field's value (bounded, control characters removed), for
    # ``mailflow trace``; '' when the message has none.
    Column("header_id", String(255), nullable=False, server_default=""),
    Index("ix_messages_status", "status"),
    Index("ix_messages_header_id", "header_id"),
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
    # The egress provider's id of the copy (Amazon SES's MessageId), which its bounce,
    # complaint and delivery notifications name.
    Column("provider_message_id", String(100), nullable=True),
    Index("ix_deliveries_message", "message_id"),
    Index("ix_deliveries_provider_message", "provider_message_id"),
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

# Held posts the moderators were told about: one row per held message and list, written
# when the notice is (so each is sent once), with the reason and when the post expires.
# The message itself is the ``messages`` row whose status is ``held``; the rows go when
# it is approved, rejected, discarded or expired.
held_posts = Table(
    "held_posts",
    metadata,
    Column("message_id", String(32), primary_key=True),
    Column("list_id", Integer, primary_key=True),
    Column("author", String(320), nullable=False, server_default=""),
    Column("reason", Text, nullable=False, server_default=""),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Index("ix_held_posts_expires", "expires_at"),
)

# Every bounce or complaint that named a member (``mailflow bounces ls``): ``kind``
# permanent, temporary or complaint; ``source`` verp, dsn, delivery or arf; ``counted``
# whether it raised the score (at most once a day).
bounce_events = Table(
    "bounce_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("list_id", Integer, nullable=False),
    Column("address", String(320), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("source", String(16), nullable=False),
    Column("counted", Boolean, nullable=False),
    Column("detail", Text, nullable=False, server_default=""),
    Column("created_at", Float, nullable=False),
    Index("ix_bounce_events_list", "list_id", "created_at"),
)

# Addresses no copy is sent to (``mailflow suppress``), checked when a message is
# expanded: ``target`` '' for every list, else one list's address (not NULL, so the
# unique constraint sees two global entries of one address as equal).
suppressions = Table(
    "suppressions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("target", String(320), nullable=False, server_default=""),
    Column("address", String(320), nullable=False),
    Column("reason", String(200), nullable=False, server_default=""),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("address", "target", name="uq_suppressions_entry"),
)

# SES notifications already handled (the Amazon SES ingress), by SES ``mail.messageId``:
# SNS and SQS redeliver, and a second arrival is acknowledged without a second copy.
ses_received = Table(
    "ses_received",
    metadata,
    Column("ses_message_id", String(255), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("message_id", String(64), nullable=False, server_default=""),
    Column("received_at", Float, nullable=False),
    Index("ix_ses_received_at", "received_at"),
)

# One DKIM signing key per domain (PEM private key, base64 DER public key for DNS).
dkim_keys = Table(
    "dkim_keys",
    metadata,
    Column("domain", String(253), primary_key=True),
    Column("selector", String(63), nullable=False),
    Column("private_key", Text, nullable=False),
    Column("public_key", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

# Who may use the API (issue 14): users with argon2 password hashes, API tokens
# (SHA-256 digests; no user: a site token), and the audit log of every change made
# through the API.  A user's roles on lists are the roster's: ``members.role`` of the
# user's address (``ix_members_staff``).
users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("password_hash", String(200), nullable=False),
    Column("is_admin", Boolean, nullable=False, server_default=false()),
    Column("created_at", Float, nullable=False),
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

# Web UI sessions (issue 14): the cookie's secret as a SHA-256 digest, with its end.
ui_sessions = Table(
    "ui_sessions",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Index("ix_ui_sessions_user", "user_id"),
)
