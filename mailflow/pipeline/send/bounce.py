"""A bounce that came back to an SRS address, rewritten to name the alias, not its target.

The destination's own report names the target it refused (``Final-Recipient``, its
text, the ``Received ... for <target>`` field of the returned header), which the
alias's owner may want hidden from the sender.  So the relay does not pass it on as
it is: it sends the original sender a report of its own (:mod:`mailflow.pipeline.notice`)
naming the alias, with the destination's ``Action`` and ``Status`` and the codes of its
``Diagnostic-Code``, and the sender's own header fields.

The alias is found by our loop marker (``X-MailFlow-Loop: <our instance id>; <alias>``),
which every forwarded copy carries and which the returned header (RFC 3464's
``text/rfc822-headers`` or ``message/rfc822`` part) usually includes; only our instance
id's marker counts.  The returned header is cut at that marker: what came before it
is the destination's and ours.  A bounce without the marker (or with its header
encoded) names the alias its Amazon SES Message-ID was sent for, if it is an SES bounce
mail the store knows, else the SRS address it was sent to, which names the sender only.
"""

from __future__ import annotations

import re

from mailflow.pipeline.notice import delivery_report

MARKER = re.compile(rb"^X-MailFlow-Loop:[ \t]*([^\s;]+);[ \t]*([^\s;<>@]+@[^\s;<>@]+)[ \t]*\r?$",
                    re.IGNORECASE | re.MULTILINE)
ACTION = re.compile(rb"^Action:[ \t]*(failed|delayed|delivered|relayed|expanded)\b",
                    re.IGNORECASE | re.MULTILINE)
STATUS = re.compile(rb"^Status:[ \t]*([245]\.\d{1,3}\.\d{1,3})", re.IGNORECASE | re.MULTILINE)
DIAGNOSTIC = re.compile(rb"^Diagnostic-Code:[ \t]*smtp;[ \t]*([245]\d\d)\b",
                        re.IGNORECASE | re.MULTILINE)
HEADER_END = re.compile(rb"\r?\n\r?\n")
MAX_HEADER = 64 * 1024  # of the sender's returned header kept in the report

EXPLANATIONS = {
    "failed": "could not be delivered: the forward was refused",
    "delayed": "is delayed: the forward has not been delivered yet",
}


def returned_alias(raw: bytes, instance_id: str) -> tuple[str, bytes] | None:
    """(the alias, the sender's own header fields after our marker), or None."""
    for found in MARKER.finditer(raw):
        if found.group(1).decode("ascii", "replace") != instance_id:
            continue
        rest = raw[found.end():].lstrip(b"\r\n")
        end = HEADER_END.search(rest)
        header = rest[:end.start()] + b"\n" if end is not None else rest
        return found.group(2).decode("utf-8", "replace"), header[:MAX_HEADER]
    return None


def rewritten_bounce(raw: bytes, *, to: str, srs_address: str, instance_id: str,
                     hostname: str, arrival: float, at: float, sent_for: str = "") -> bytes:
    """The report the original sender gets for the bounce ``raw``.

    ``sent_for``: the alias the store says the bounced copy was sent for (an Amazon SES
    bounce mail, by SES's Message-ID: :mod:`mailflow.pipeline.send.ses_bounce`), named
    when the returned header has no marker of ours.
    """
    found = returned_alias(raw, instance_id)
    alias, header = found if found is not None else (sent_for or srs_address, b"")
    action_match = ACTION.search(raw)
    action = action_match.group(1).decode().lower() if action_match else "failed"
    status_match = STATUS.search(raw)
    status = (status_match.group(1).decode() if status_match
              else "5.0.0" if action == "failed" else "4.0.0" if action == "delayed"
              else "2.0.0")
    code_match = DIAGNOSTIC.search(raw)
    code = code_match.group(1).decode() if code_match else ""
    if not code or code[0] != status[0]:
        code = {"2": "250", "4": "451", "5": "554"}[status[0]]
    return delivery_report(
        to=to, alias=alias, action=action, status=status, diagnostic=f"smtp; {code} {status}",
        explanation=EXPLANATIONS.get(action, f"was {action} by the forward"),
        arrival=arrival, at=at, header=header, hostname=hostname)
