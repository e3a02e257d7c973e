"""The next hop of the SMTP egress, as configured: ``smtp://[user:pass@]host:port``.

A module of its own, without pydantic, so the relay's child process (``mailflow.child.worker``)
can import it without loading the configuration machinery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

TlsMode = Literal["starttls", "implicit", "none"]


@dataclass(frozen=True, slots=True)
class SmtpRelay:
    """Where the SMTP egress hands mail to: parsed from ``smtp://[user:pass@]host:port``."""

    host: str
    port: int
    tls: TlsMode = "none"
    username: str | None = None
    password: str | None = None
    verify_tls: bool = True

    def __repr__(self) -> str:  # never print the password
        auth = f"{self.username}:***@" if self.username else ""
        scheme = "smtps" if self.tls == "implicit" else "smtp"
        return f"SmtpRelay({scheme}://{auth}{self.host}:{self.port}?tls={self.tls})"


def parse_smtp_relay(url: str) -> SmtpRelay:
    """Parse ``smtp://[user:pass@]host[:port][?tls=starttls|implicit|none&verify=yes|no]``."""
    parts = urlsplit(url)
    if parts.scheme not in {"smtp", "smtps"} or not parts.hostname:
        raise ValueError(f"expected smtp://[user:pass@]host:port[?tls=...], got {url!r}")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"tls", "verify"}
    if unknown:
        raise ValueError(f"unknown smtp relay option(s): {', '.join(sorted(unknown))}")
    default_tls = "implicit" if parts.scheme == "smtps" else "none"
    tls = query.get("tls", default_tls)
    if tls not in ("starttls", "implicit", "none"):
        raise ValueError(f"tls must be starttls, implicit or none, got {tls!r}")
    verify = query.get("verify", "yes").lower() not in {"no", "false", "0", "off"}
    try:
        port = parts.port or (465 if tls == "implicit" else 25)
    except ValueError as exc:
        raise ValueError(f"invalid port in {url!r}") from exc
    return SmtpRelay(
        host=parts.hostname,
        port=port,
        tls=tls,  # type: ignore[arg-type]
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        verify_tls=verify,
    )
