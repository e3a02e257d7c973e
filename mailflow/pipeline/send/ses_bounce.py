"""An Amazon SES bounce mail: which copy it is about, by the Message-ID SES gave it.

SES mails the bounces of a copy it sent to the copy's ``FeedbackForwardingEmailAddress``
(for an alias forward, the forward's SRS address), ``From: MAILER-DAEMON@amazonses.com``,
with the returned header in which SES's own Message-ID names the copy:
``<MESSAGE-ID@email.amazonses.com>`` (or ``@<region>.amazonses.com``), ``MESSAGE-ID``
being the SES MessageId the egress stored on the delivery.  When the returned header
lacks our loop marker (:mod:`mailflow.pipeline.send.bounce`), that id is how the relay
finds the alias to name.  Only mail whose ``From`` is at ``amazonses.com`` is read so.
"""

from __future__ import annotations

import re

from mailflow.headers import field_values, split_message

SES_MESSAGE_ID = re.compile(rb"<([0-9a-zA-Z-]{20,100})@(?:[a-z0-9-]+\.)*amazonses\.com>",
                            re.IGNORECASE)
MAX_IDS = 10  # ids looked up for one bounce


def ses_message_ids(raw: bytes) -> list[str]:
    """SES MessageIds the bounce ``raw`` names, if it comes from SES; else none."""
    header, body = split_message(raw)
    senders = field_values(header, "from")
    if not senders or not senders[0].lower().rstrip("> ").endswith("@amazonses.com"):
        return []
    ids: list[str] = []
    for found in SES_MESSAGE_ID.finditer(body):
        ses_id = found.group(1).decode("ascii")
        if ses_id not in ids:
            ids.append(ses_id)
        if len(ids) == MAX_IDS:
            break
    return ids
