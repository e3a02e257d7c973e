"""Who may do what through the API: users, their passwords, tokens, roles, the audit log.

Passwords are hashed with argon2id (``argon2-cffi``'s defaults); tokens are 32 random
bytes shown once and stored as their SHA-256 digest, which is enough for a secret that
cannot be guessed and keeps each request's check to one indexed read.  A token without
a user is a site token: it acts as a site admin (for scripts and monitoring).

A user's roles on lists are the rosters': the user is owner or moderator of a list when
its roster has the user's address with that role (``members.role``), whatever the
member's status (an owner who takes no mail still owns the list).

A :class:`Principal` is the caller of one request.  The API asks it, never the tables,
whether the caller may read or change a list, so the rule is written once: a site admin
may do everything; an owner may read and change their lists; a moderator may read
their lists and decide about their held messages; a read token changes nothing.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from mailflow.clock import Clock, SystemClock
from mailflow.errors import Forbidden, InvalidInput, NotFound, Unauthenticated
from mailflow.model import ApiToken, AuditEntry, ListRole, TokenScope, User
from mailflow.services.directory import validated_address, validated_list_name
from mailflow.store.access import AccessRepository

if TYPE_CHECKING:
    import argon2

PASSWORD_MIN_LENGTH: Final = 10
PASSWORD_MAX_LENGTH: Final = 1000   # characters: argon2 hashes any length, slowly
TOKEN_PREFIX: Final = "mf_"
TOKEN_MAX_LENGTH: Final = 100       # a longer bearer value is no token of ours
SESSION_MAX_LENGTH: Final = 100     # a longer cookie value is no session of ours
AUDIT_TEXT_MAX: Final = 320         # characters of an entry's target (its column)
AUDIT_DETAIL_MAX: Final = 2000


@functools.cache
def _hasher() -> argon2.PasswordHasher:
    """argon2's hasher, made (and argon2 loaded) by the first password handled."""
    import argon2

    return argon2.PasswordHasher()



@functools.cache
def _dummy_hash() -> str:
    """Verified against when the account does not exist, so the answer takes as long
    (made on first use: a hash costs as much as a login)."""
    return _hasher().hash(secrets.token_hex(16))


def token_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def validated_password(password: str) -> str:
    if not PASSWORD_MIN_LENGTH <= len(password) <= PASSWORD_MAX_LENGTH:
        raise InvalidInput(f"a password has {PASSWORD_MIN_LENGTH} to {PASSWORD_MAX_LENGTH} "
                           f"characters (this one has {len(password)})")
    return password


def validated_scope(scope: str | TokenScope) -> TokenScope:
    try:
        return TokenScope(scope)
    except ValueError:
        raise InvalidInput(f"invalid scope {scope!r}: it must be read or write") from None


def validated_role(role: str | ListRole) -> ListRole:
    try:
        return ListRole(role)
    except ValueError:
        raise InvalidInput(f"invalid role {role!r}: it must be owner or moderator") from None


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request: a user (or a site token), its token's scope, and its
    roles on lists (by address)."""

    actor: str
    is_admin: bool
    scope: TokenScope
    user: User | None = None
    roles: dict[str, ListRole] = field(default_factory=dict)

    def require_write(self) -> None:
        if self.scope is not TokenScope.WRITE:
            raise Forbidden("this token may only read (its scope is read)")

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("only a site admin may do this")

    def may_read_list(self, address: str) -> bool:
        return self.is_admin or address in self.roles

    def require_list(self, address: str, *, change: bool = False,
                     moderate: bool = False) -> None:
        """Read (default), moderate (held messages) or ``change`` one list.

        A list the caller has no role on is refused as it would be if it did not exist,
        so that nobody learns another owner's lists by trying addresses.
        """
        if change or moderate:
            self.require_write()
        if self.is_admin:
            return
        role = self.roles.get(address)
        if role is None:
            raise NotFound("list", address)
        if change and role is not ListRole.OWNER:
            raise Forbidden(f"only an owner may change {address} (you moderate it)")


class AccessService:
    def __init__(self, store: AccessRepository, clock: Clock | None = None) -> None:
        self.store = store
        self.clock = clock or SystemClock()

    # -- users --------------------------------------------------------------------------

    def add_user(self, email: str, password: str, *, admin: bool = False) -> User:
        address = validated_address(email)
        return self.store.add_user(address, _hasher().hash(validated_password(password)),
                                   admin, self.clock.now())

    def users(self) -> list[User]:
        return self.store.users()

    def remove_user(self, email: str) -> None:
        self.store.remove_user(validated_address(email))

    def set_list_role(self, email: str, list_address: str, role: str | ListRole | None
                      ) -> None:
        """The shortcut of ``mailflow user role``: the role of the user's address on the
        list's roster (see :meth:`AccessRepository.set_list_role`)."""
        self.store.set_list_role(validated_address(email), validated_address(list_address),
                                 None if role is None else validated_role(role),
                                 self.clock.now())

    def check_password(self, email: str, password: str) -> User:
        """The user whose password this is; :class:`Unauthenticated` otherwise (the same
        answer, after the same work, for an unknown address)."""
        found = self.store.user_with_hash(email.strip().lower())
        stored = found[1] if found else _dummy_hash()
        from argon2.exceptions import InvalidHashError, VerificationError

        try:
            _hasher().verify(stored, password[:PASSWORD_MAX_LENGTH])
        except (VerificationError, InvalidHashError):
            raise Unauthenticated("wrong address or password") from None
        if found is None:
            raise Unauthenticated("wrong address or password")
        return found[0]

    # -- tokens -------------------------------------------------------------------------

    def create_token(self, email: str | None, scope: str | TokenScope = TokenScope.WRITE,
                     label: str = "") -> tuple[ApiToken, str]:
        """A new token and its secret, which is stored only as a digest: show it once."""
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        owner = None if email is None else validated_address(email)
        token = self.store.add_token(token_digest(secret), owner, validated_scope(scope),
                                     validated_list_name(label), self.clock.now())
        return token, secret

    def tokens(self, email: str | None = None) -> list[ApiToken]:
        return self.store.tokens(None if email is None else validated_address(email))

    def revoke_token(self, token_id: int, email: str | None = None) -> None:
        self.store.remove_token(token_id, None if email is None else validated_address(email))

    def principal(self, secret: str) -> Principal:
        """The caller a bearer token names; :class:`Unauthenticated` for any other value."""
        if not secret.startswith(TOKEN_PREFIX) or len(secret) > TOKEN_MAX_LENGTH:
            raise Unauthenticated("not an API token of this relay")
        found = self.store.token_by_digest(token_digest(secret))
        if found is None:
            raise Unauthenticated("unknown or revoked API token")
        token, user = found
        if user is None:
            return Principal(f"token:{token.id}", True, token.scope)
        roles = {} if user.is_admin else self.store.roles_of(user.email)
        return Principal(user.email, user.is_admin, token.scope, user, roles)

    # -- web UI sessions ----------------------------------------------------------------

    def open_session(self, user: User, lifetime: float) -> str:
        """A new session for a user who just logged in: its secret, for the cookie
        (stored only as a digest), valid for ``lifetime`` seconds."""
        secret = secrets.token_urlsafe(32)
        now = self.clock.now()
        self.store.add_session(token_digest(secret), user.id, now, now + lifetime)
        return secret

    def session_principal(self, secret: str) -> Principal:
        """The caller a session cookie names: its user with their roles, allowed to
        change what the user may change; :class:`Unauthenticated` for an unknown or
        ended session."""
        if not secret or len(secret) > SESSION_MAX_LENGTH:
            raise Unauthenticated("not a session of this relay")
        user = self.store.session_user(token_digest(secret), self.clock.now())
        if user is None:
            raise Unauthenticated("the session has ended: log in again")
        roles = {} if user.is_admin else self.store.roles_of(user.email)
        return Principal(user.email, user.is_admin, TokenScope.WRITE, user, roles)

    def close_session(self, secret: str) -> None:
        if secret and len(secret) <= SESSION_MAX_LENGTH:
            self.store.remove_session(token_digest(secret))

    # -- audit log ----------------------------------------------------------------------

    def record(self, actor: str, action: str, target: str = "", detail: str = "") -> None:
        """Write one change to the audit log: who, what, on what, when."""
        self.store.add_audit(actor[:AUDIT_TEXT_MAX], action, target[:AUDIT_TEXT_MAX],
                             detail[:AUDIT_DETAIL_MAX], self.clock.now())

    def audit(self, limit: int, before_id: int | None = None, actor: str | None = None,
              target: str | None = None) -> list[AuditEntry]:
        return self.store.audit(limit, before_id, actor, target)
