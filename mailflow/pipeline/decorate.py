"""The outbound header section of a copy sent through a list or alias.

The body and every original header byte stay as received; the relay prepends its own
trace and list fields and removes only the list fields it replaces.
"""

from __future__ import annotations

from email.header import Header
from email.utils import formatdate, quote

from mailflow import headers
from mailflow.model import InboundMessage, ListKind, MailingList
from mailflow.pipeline.loops import LOOP_HEADER, loop_marker

# Fields a list owns: an incoming copy of another list's fields would contradict ours.
LIST_FIELDS = ("List-Id", "List-Post")


def outbound_message(raw: bytes, message: InboundMessage, mailing_list: MailingList,
                     instance_id: str, hostname: str) -> bytes:
    header, rest = headers.split_message(raw)
    newline = b"\r\n" if header.endswith(b"\r\n") or not header else b"\n"
    fields = [
        f"Received: from {message.helo or 'unknown'} ({message.peer or 'unknown'})\n"
        f"\tby {hostname} (MailFlow Relay) with {message.protocol} id {message.id}\n"
        f"\tfor <{mailing_list.address}>; {formatdate(message.received_at)}",
        f"{LOOP_HEADER}: {loop_marker(instance_id, mailing_list.address)}",
    ]
    if mailing_list.kind is ListKind.LIST:
        label = f"{_phrase(mailing_list.name)} " if mailing_list.name else ""
        fields.append(f"List-Id: {label}<{mailing_list.list_id}>")
        fields.append(f"List-Post: <mailto:{mailing_list.address}>")
        header = headers.without_fields(header, LIST_FIELDS)
    added = "\n".join(fields).replace("\n", newline.decode()).encode("utf-8") + newline
    return added + header + rest


def _phrase(name: str) -> str:
    """A display name as a quoted string, or an RFC 2047 encoded word if not ASCII."""
    if name.isascii():
        return f'"{quote(name)}"'
    return Header(name, "utf-8").encode()
