"""Every SMTP/LMTP reply with an enhanced status code (RFC 2034, RFC 3463), and the EHLO
extensions that promise it.

Why: the relay advertises ``ENHANCEDSTATUSCODES``, so a client may rely on a code in
every reply; a sending MTA bounces or retries by it and quotes it in its bounce.  The
relay's own replies take theirs from :data:`mailflow.errors.TABLE`; aiosmtpd's built-in
replies (syntax errors, commands out of order, ``NOOP``, ``RSET``, ``QUIT``, ``HELP``,
``VRFY``…) have none, so :class:`EnhancedStatusCodes` adds one as each reply is sent.
Not given one, as RFC 2034 and common servers do: the greeting, the answers to
HELO/EHLO/LHLO, and the intermediate ``354``/``334`` replies.

``PIPELINING`` (RFC 2920) is advertised because aiosmtpd reads commands from one
buffered stream and answers them in order, so a client may send a group of commands in
one write.  ``CHUNKING``/``BDAT`` (RFC 3030) is not: aiosmtpd has no ``BDAT``, and one
written here would have to duplicate its ``DATA`` state machine.
"""

from __future__ import annotations

import re
from typing import Any

# The extensions added to aiosmtpd's EHLO/LHLO answer (SIZE, 8BITMIME, SMTPUTF8, HELP).
EXTENSIONS = ("PIPELINING", "ENHANCEDSTATUSCODES")

_HAS_CODE = re.compile(r"\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")

# aiosmtpd's own replies without a code (1.4.6), by how they start, and the code each
# gets; tests/test_smtp_limits.py checks that each still occurs in aiosmtpd.
AIOSMTPD_REPLIES: tuple[tuple[str, str], ...] = (
    ("250 OK", "2.0.0"),                     # NOOP, RSET
    ("221 Bye", "2.0.0"),                    # QUIT
    ("250 Syntax:", "2.0.0"),                # HELP <command>
    ("250 Supported commands:", "2.0.0"),    # HELP
    ("501 Supported commands:", "5.5.4"),    # HELP <unknown command>
    ("252 Cannot VRFY", "2.0.0"),
    ("502 Could not VRFY", "5.1.3"),         # not an address
    ("501 Syntax:", "5.5.4"),                # any command's arguments
    ("500 Error: bad syntax", "5.5.2"),      # an empty or non-ASCII command line
    ("500 Command line too long", "5.5.2"),
    ("500 Error: command", "5.5.1"),         # command "X" not recognized
    ("502 EXPN not implemented", "5.5.1"),
    ("503 Error: send", "5.5.1"),            # send HELO first
    ("503 Error: nested MAIL command", "5.5.1"),
    ("503 Error: need", "5.5.1"),            # need MAIL / RCPT command
    ("501 Error: BODY", "5.5.4"),
    ("501 Error: SMTPUTF8", "5.5.4"),
    ("555 MAIL FROM parameters", "5.5.4"),
    ("555 RCPT TO parameters", "5.5.4"),
    ("220 Ready to start TLS", "2.0.0"),
    ("454 TLS not available", "4.7.0"),
    ("530 Must issue a STARTTLS command first", "5.7.0"),
    ("554 Command refused due to lack of security", "5.7.0"),
    ("503 Already authenticated", "5.5.1"),
    ("501 Not enough value", "5.5.4"),
    ("501 Too many values", "5.5.4"),
)


def with_enhanced_code(line: str, *, greeting_answer: bool = False) -> str:
    """``line`` with an enhanced status code after its reply code, unless exempt.

    ``greeting_answer``: a positive answer to HELO/EHLO/LHLO, which keeps none.
    """
    if _HAS_CODE.match(line) or len(line) < 3 or not line[:3].isdigit():
        return line
    code, separator, text = line[:3], line[3:4], line[4:]
    if code == "552" and text.startswith("Error"):  # over max_message_size, both ways
        return f"552{separator}5.3.4 message too large"
    if code == "500" and text.startswith("Line too long"):
        return f"500{separator}5.5.2 line too long (RFC 5321 4.5.3.1.6: at most 1000 octets)"
    for start, enhanced in AIOSMTPD_REPLIES:
        if line.startswith(start):
            return f"{code}{separator}{enhanced} {text}"
    if code[0] == "3" or code == "220" or (greeting_answer and code[0] == "2"):
        return line
    return f"{code}{separator}{code[0]}.0.0 {text}"


class EnhancedStatusCodes:
    """Gives each reply aiosmtpd sends an enhanced status code (a mixin of its classes)."""

    data_size_limit: int | None
    _greeting_answer = False

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        result = await super()._call_handler_hook(command, *args)  # type: ignore[misc]
        # aiosmtpd sends what the HELO/EHLO hook returns next (LHLO runs EHLO's).
        self._greeting_answer = command in ("HELO", "EHLO")
        return result

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str):
            status = "\r\n".join(with_enhanced_code(line, greeting_answer=self._greeting_answer)
                                 for line in status.split("\r\n"))
            if self._greeting_answer and status.rpartition("\r\n")[2][3:4] != "-":
                self._greeting_answer = False
            if status.startswith("552 5.3.4 message too large") and self.data_size_limit:
                status += f" (limit {self.data_size_limit} bytes)"
        await super().push(status)  # type: ignore[misc]


def advertise(responses: list[str]) -> list[str]:
    """aiosmtpd's EHLO/LHLO answer with :data:`EXTENSIONS`, before its last line."""
    if len(responses) < 2:  # a refusal, not the list of extensions
        return responses
    present = {line[4:].split(" ", 1)[0].upper() for line in responses}
    added = [f"250-{name}" for name in EXTENSIONS if name not in present]
    return [*responses[:-1], *added, responses[-1]]
