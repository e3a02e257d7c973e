"""STARTTLS on the SMTP listener: the server's certificate, reloadable, and its session rules.

The relay's SMTP port faces the internet, so every post would cross it in clear without
STARTTLS (RFC 3207).  aiosmtpd does the protocol; this module gives it a context that
speaks TLS 1.2 or newer only, lets an operator replace the certificate without a
restart (:meth:`ServerTls.reload`, on SIGHUP: a session takes the context current when it
connects, so sessions under way keep theirs), and fixes what aiosmtpd answers around it
(:class:`StartTlsSession`).  There is no AUTH: the relay takes mail from MTAs, not from
users' mail clients, so TLS here protects the message, it does not admit anyone.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import ssl
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import TLSSetupException

from mailflow.errors import ConfigurationError

log = logging.getLogger(__name__)

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
_FIRST_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s*(.+?)\s*-----END CERTIFICATE-----", re.S)


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server context for the certificate chain in ``cert_file`` (PEM, leaf first) and
    its key; raises :class:`ConfigurationError` naming the files if they do not load."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = MINIMUM_VERSION
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if "PEM lib" in reason:  # OpenSSL's words for a file it cannot parse
            reason += " (a file that is not PEM, or an encrypted key)"
        raise ConfigurationError(f"cannot load the TLS certificate {cert_file} with the key "
                                 f"{key_file}: {reason}") from None
    return context


def fingerprint(cert_file: Path) -> str:
    """SHA-256 of the first certificate in ``cert_file``, as ``openssl x509 -fingerprint
    -sha256`` prints it, so an operator can tell from the log which certificate is served."""
    try:
        match = _FIRST_CERTIFICATE.search(cert_file.read_bytes())
    except OSError as exc:
        raise ConfigurationError(f"cannot read the TLS certificate {cert_file}: "
                                 f"{exc.strerror}") from None
    try:
        if match is None:
            raise ValueError("no PEM certificate")
        der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
    except ValueError as exc:
        raise ConfigurationError(f"cannot read the TLS certificate {cert_file}: {exc}") from None
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def _load(cert_file: Path, key_file: Path) -> tuple[ssl.SSLContext, str]:
    print_ = fingerprint(cert_file)  # first: its errors say more than OpenSSL's
    return server_context(cert_file, key_file), print_


class ServerTls:
    """The SMTP listener's TLS: its files, whether MAIL needs TLS first, the context now.

    Built with :meth:`load` (the files are read off the event loop).
    """

    def __init__(self, cert_file: Path, key_file: Path, *, require: bool,
                 context: ssl.SSLContext, fingerprint: str) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.require = require
        self.context = context
        self.fingerprint = fingerprint

    @classmethod
    async def load(cls, cert_file: Path, key_file: Path, *, require: bool) -> ServerTls:
        context, print_ = await asyncio.to_thread(_load, cert_file, key_file)
        return cls(cert_file, key_file, require=require, context=context, fingerprint=print_)

    async def reload(self) -> str:
        """Read the files again for the sessions that connect from now on; returns the new
        certificate's fingerprint.  If they do not load, the old certificate stays and
        :class:`ConfigurationError` says why (a half-written renewal must not stop TLS)."""
        self.context, self.fingerprint = await asyncio.to_thread(
            _load, self.cert_file, self.key_file)
        return self.fingerprint


class StartTlsSession:
    """Mixin for the SMTP session: aiosmtpd's TLS replies, made what the relay promises.

    aiosmtpd answers a command refused before STARTTLS without the enhanced status code
    RFC 3207 gives it, and after STARTTLS advertises and runs AUTH (with a callback that
    fails every login): the relay offers no AUTH at all.  A failed handshake (a scanner,
    a client that does not trust the certificate) is one line at INFO, not a traceback
    per connection.
    """

    session: Any

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            if status == "530 Must issue a STARTTLS command first":
                status = "530 5.7.0 Must issue a STARTTLS command first"
            elif status.startswith("250-AUTH"):
                return  # EHLO's AUTH line, never the last one (aiosmtpd ends with HELP)
        await super().push(status)  # type: ignore[misc]

    async def smtp_AUTH(self, arg: str) -> None:
        await self.push("502 5.5.1 AUTH is not offered: this relay takes mail from MTAs")

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):  # aiosmtpd closes the connection
            log.info("%s: TLS handshake failed: %s", self.session.peer, error.__cause__,
                     extra={"action": "tls_failed"})
            return "454 4.7.0 TLS handshake failed"
        return await super().handle_exception(error)  # type: ignore[misc, no-any-return]
