"""LMTP egress (RFC 2033): hands mail to a mailbox server, one reply per recipient.

LMTP is SMTP without a queue on the far side: the server delivers during DATA and says,
for each recipient it accepted, whether that mailbox took the copy.  So one full mailbox
defers (4xx) or fails (5xx) only its own recipient.  The pool, reuse and TLS handling are
:class:`mailflow.egress.smtp.SmtpEgress`'s; the client runs in its LMTP mode (LHLO, and
one reply per accepted recipient after the content).  The URL is ``lmtp://host[:port]``
(:func:`mailflow.config.parse_provider_url`, port 24 by default).
"""

from __future__ import annotations

from mailflow.egress.smtp import SmtpEgress


class LmtpEgress(SmtpEgress):
    name = "lmtp"
    lmtp = True
