"""The storage port for who may use the API: users, their roles on lists (the rosters'),
tokens, the audit log.

Like :class:`~mailflow.store.repository.Repository`, every method is synchronous, runs
one short transaction and stores what it is given: the access service validates and
hashes before anything comes here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, delete, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from mailflow.errors import Conflict, NotFound
from mailflow.model import (
    ApiToken,
    AuditEntry,
    ListRole,
    MemberRole,
    MemberStatus,
    TokenScope,
    User,
)
from mailflow.store.engine import Engines
from mailflow.store.tables import (
    STAFF_ROLES,
    api_tokens,
    audit_log,
    lists,
    members,
    ui_sessions,
    users,
)


def _user(row: Row[Any]) -> User:
    return User(id=row.id, email=row.email, is_admin=bool(row.is_admin),
                created_at=row.created_at)


def _token(row: Any) -> ApiToken:  # rows of two different selects
    return ApiToken(id=row.id, user_email=row.email, scope=TokenScope(row.scope),
                    label=row.label, created_at=row.created_at)


_TOKEN_COLUMNS = (api_tokens.c.id, api_tokens.c.scope, api_tokens.c.label,
                  api_tokens.c.created_at, users.c.email)


class AccessRepository:
    def __init__(self, engines: Engines) -> None:
        self.engines = engines

    # -- users --------------------------------------------------------------------------

    def add_user(self, email: str, password_hash: str, is_admin: bool, now: float) -> User:
        try:
            with self.engines.writer.begin() as conn:
                new_id = conn.scalar(insert(users).values(
                    email=email, password_hash=password_hash, is_admin=is_admin,
                    created_at=now).returning(users.c.id))
        except IntegrityError:
            raise Conflict("user", email, f"user {email} exists already") from None
        return User(id=int(new_id or 0), email=email, is_admin=is_admin, created_at=now)

    def user_with_hash(self, email: str) -> tuple[User, str] | None:
        with self.engines.reader.connect() as conn:
            row = conn.execute(select(users).where(users.c.email == email)).first()
        return (_user(row), row.password_hash) if row else None

    def users(self) -> list[User]:
        with self.engines.reader.connect() as conn:
            return [_user(r) for r in conn.execute(select(users).order_by(users.c.email))]

    def remove_user(self, email: str) -> None:
        with self.engines.writer.begin() as conn:
            user_id = self._user_id(conn, email)
            conn.execute(delete(api_tokens).where(api_tokens.c.user_id == user_id))
            conn.execute(delete(ui_sessions).where(ui_sessions.c.user_id == user_id))
            conn.execute(delete(users).where(users.c.id == user_id))

    @staticmethod
    def _user_id(conn: Any, email: str) -> int:
        user_id = conn.scalar(select(users.c.id).where(users.c.email == email))
        if user_id is None:
            raise NotFound("user", email)
        return int(user_id)

    # -- roles on lists -----------------------------------------------------------------

    def set_list_role(self, email: str, list_address: str, role: ListRole | None,
                      now: float) -> None:
        """Make the user ``email`` owner or moderator of a list, or (``None``) neither:
        the role of their address on the list's roster.  An address not on it is added
        disabled (it receives nothing: managing a list is not reading it); ``None``
        leaves a member with the role ``member``."""
        with self.engines.writer.begin() as conn:
            self._user_id(conn, email)
            list_id = conn.scalar(select(lists.c.id).where(lists.c.address == list_address))
            if list_id is None:
                raise NotFound("list", list_address)
            mine = (members.c.list_id == list_id) & (members.c.address == email)
            value = MemberRole.MEMBER.value if role is None else role.value
            changed = conn.execute(update(members).where(mine).values(role=value)).rowcount
            if not changed and role is not None:
                conn.execute(insert(members).values(
                    list_id=list_id, address=email, status=MemberStatus.DISABLED.value,
                    created_at=now, name="", role=role.value))

    def roles_of(self, email: str) -> dict[str, ListRole]:
        """The lists a user's address owns or moderates, by address: one read of the
        small partial index ``ix_members_staff`` (its condition repeated here)."""
        query = (select(lists.c.address, members.c.role)
                 .join(lists, lists.c.id == members.c.list_id)
                 .where(members.c.address == email, text(f"members.{STAFF_ROLES}")))
        with self.engines.reader.connect() as conn:
            return {address: ListRole(role) for address, role in conn.execute(query)}

    # -- tokens -------------------------------------------------------------------------

    def add_token(self, digest: str, email: str | None, scope: TokenScope, label: str,
                  now: float) -> ApiToken:
        with self.engines.writer.begin() as conn:
            user_id = None if email is None else self._user_id(conn, email)
            token_id = conn.scalar(insert(api_tokens).values(
                digest=digest, user_id=user_id, scope=scope.value, label=label,
                created_at=now).returning(api_tokens.c.id))
        return ApiToken(int(token_id or 0), email, scope, label, now)

    def token_by_digest(self, digest: str) -> tuple[ApiToken, User | None] | None:
        """The token of a digest and its user (None for a site token): one read."""
        query = (select(*_TOKEN_COLUMNS, users.c.id.label("user_id"),
                        users.c.is_admin, users.c.created_at.label("user_created_at"))
                 .outerjoin(users, users.c.id == api_tokens.c.user_id)
                 .where(api_tokens.c.digest == digest))
        with self.engines.reader.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        user = (None if row.user_id is None else
                User(row.user_id, row.email, bool(row.is_admin), row.user_created_at))
        return _token(row), user

    def tokens(self, email: str | None = None) -> list[ApiToken]:
        """Every token, or one user's."""
        query = (select(*_TOKEN_COLUMNS).outerjoin(users, users.c.id == api_tokens.c.user_id)
                 .order_by(api_tokens.c.id))
        if email is not None:
            query = query.where(users.c.email == email)
        with self.engines.reader.connect() as conn:
            return [_token(r) for r in conn.execute(query)]

    def remove_token(self, token_id: int, email: str | None = None) -> None:
        """Revoke a token (one of ``email``'s, if given)."""
        with self.engines.writer.begin() as conn:
            query = delete(api_tokens).where(api_tokens.c.id == token_id)
            if email is not None:
                query = query.where(api_tokens.c.user_id == self._user_id(conn, email))
            if not conn.execute(query).rowcount:
                raise NotFound("token", str(token_id), f"no API token {token_id}")

    # -- web UI sessions ----------------------------------------------------------------

    def add_session(self, digest: str, user_id: int, now: float, expires_at: float) -> None:
        """Store a new session, and drop every session that has ended (logins are
        rare: this keeps the table as small as the sessions alive, with no timer)."""
        with self.engines.writer.begin() as conn:
            conn.execute(delete(ui_sessions).where(ui_sessions.c.expires_at <= now))
            conn.execute(insert(ui_sessions).values(digest=digest, user_id=user_id,
                                                    created_at=now, expires_at=expires_at))

    def session_user(self, digest: str, now: float) -> User | None:
        """The user of a session that has not ended: one read."""
        query = (select(users).join(ui_sessions, ui_sessions.c.user_id == users.c.id)
                 .where(ui_sessions.c.digest == digest, ui_sessions.c.expires_at > now))
        with self.engines.reader.connect() as conn:
            row = conn.execute(query).first()
        return _user(row) if row else None

    def remove_session(self, digest: str) -> None:
        with self.engines.writer.begin() as conn:
            conn.execute(delete(ui_sessions).where(ui_sessions.c.digest == digest))

    # -- audit log ----------------------------------------------------------------------

    def add_audit(self, actor: str, action: str, target: str, detail: str,
                  now: float) -> None:
        with self.engines.writer.begin() as conn:
            conn.execute(insert(audit_log).values(created_at=now, actor=actor,
                                                  action=action, target=target,
                                                  detail=detail))

    def audit(self, limit: int, before_id: int | None = None, actor: str | None = None,
              target: str | None = None) -> list[AuditEntry]:
        """Entries newest first, those older than ``before_id`` (a cursor)."""
        query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        if before_id is not None:
            query = query.where(audit_log.c.id < before_id)
        if actor is not None:
            query = query.where(audit_log.c.actor == actor)
        if target is not None:
            query = query.where(audit_log.c.target == target)
        with self.engines.reader.connect() as conn:
            return [AuditEntry(r.id, r.created_at, r.actor, r.action, r.target, r.detail)
                    for r in conn.execute(query)]
