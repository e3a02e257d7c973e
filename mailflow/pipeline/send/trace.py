"""Trace fields of a copy: our Received field and our loop marker for the list."""

from __future__ import annotations

from email.utils import formatdate

from mailflow.headers import header_safe
from mailflow.model import GENERATED
from mailflow.pipeline.context import CopyContext
from mailflow.pipeline.marker import LOOP_HEADER, loop_marker


def trace_fields(copy: CopyContext) -> None:
    message, mailing_list = copy.message, copy.mailing_list
    if message.protocol == GENERATED:  # written here: there is no client to trace
        copy.added.append(f"{LOOP_HEADER}: "
                          f"{loop_marker(copy.identity.instance_id, mailing_list.address)}")
        return
    copy.added.append(
        # The HELO name is the client's choice: a bare CR in it would start a field.
        f"Received: from {header_safe(message.helo or 'unknown')} "
        f"({header_safe(message.peer or 'unknown')})\n"
        f"\tby {copy.identity.hostname} (MailFlow Relay) with {message.protocol} "
        f"id {message.id}\n"
        f"\tfor <{mailing_list.address}>; {formatdate(message.received_at)}")
    marker = loop_marker(copy.identity.instance_id, mailing_list.address)
    copy.added.append(f"{LOOP_HEADER}: {marker}")
