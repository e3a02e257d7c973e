"""The listener's fast MAIL/RCPT path parser gives exactly what aiosmtpd's own gives."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import SMTP

from mailflow.ingress.limits import ConnectionLimiter, SessionLimits
from mailflow.ingress.smtp import RelayLMTP, RelaySMTP

ARGUMENTS = [
    "<a@b.test>", "<a@b.test> SIZE=100", " <a.b+c@x-y.test>  BODY=8BITMIME",
    "<a@b.test>\tSIZE=2 BODY=7BIT", "<a@b.test>x", "<a..b@c.test>", '<"q r"@b.test>',
    "<>", "<a@b.test> (comment) SIZE=1", "<a@[127.0.0.1]>", "<ü@b.test> SMTPUTF8",
    "a@b.test", "<a@b.test", "<@relay.test:a@b.test>", "<.a@b.test>", "",
]


class _Handler:
    pass


@pytest.mark.parametrize("argument", ARGUMENTS)
@pytest.mark.parametrize("limit", [0, 3])
def test_fast_path_parser_agrees_with_aiosmtpd(argument: str, limit: int) -> None:
    reference = SMTP(_Handler())
    reference.local_part_limit = limit
    for server_class in (RelaySMTP, RelayLMTP):
        server = server_class(_Handler(), limiter=ConnectionLimiter(SessionLimits()))
        server.local_part_limit = limit
        assert server._getaddr(argument) == reference._getaddr(argument)


async def test_the_helo_name_is_made_safe_to_store_and_to_copy() -> None:
    """Invalid UTF-8 in EHLO (lone surrogates once decoded) failed the whole group commit
    with UnicodeEncodeError; a bare CR reached the Received field of every copy."""
    from aiosmtpd.smtp import Envelope as SmtpEnvelope
    from aiosmtpd.smtp import Session

    from mailflow.ingress.smtp import RelayHandler

    session = Session(loop=None)  # type: ignore[arg-type]
    session.peer = ("192.0.2.1", 25000)
    handler = RelayHandler(_Handler())  # type: ignore[arg-type]
    for helo, stored in [("\udcff\udcfe", "??"), ("evil\rX-Injected: yes", "evil?X-Injected: yes"),
                         ("mail.example.test", "mail.example.test")]:
        session.host_name = helo
        envelope = handler._envelope(session, SmtpEnvelope())
        assert envelope.helo == stored and envelope.helo.encode("utf-8")
