"""RFC 2369/2919 list fields of a copy sent through a list (aliases add none).

An incoming copy of another list's fields would contradict ours, so they are replaced.
"""

from __future__ import annotations

from email.header import Header
from email.utils import quote

from mailflow.headers import header_safe
from mailflow.model import GENERATED, ListKind
from mailflow.pipeline.context import CopyContext

LIST_FIELDS = ("List-Id", "List-Post")


def list_headers(copy: CopyContext) -> None:
    mailing_list = copy.mailing_list
    if mailing_list.kind is not ListKind.LIST or copy.message.protocol == GENERATED:
        return  # an auto-reply from a list is not a post to it
    label = f"{_phrase(mailing_list.name)} " if mailing_list.name else ""
    copy.added.append(f"List-Id: {label}<{mailing_list.list_id}>")
    copy.added.append(f"List-Post: <mailto:{mailing_list.address}>")
    copy.removed.extend(LIST_FIELDS)


def _phrase(name: str) -> str:
    """A display name as a quoted string, or an RFC 2047 encoded word if not ASCII.

    The directory refuses line breaks in names; a name stored before it did is made
    safe here too.
    """
    name = header_safe(name)
    if name.isascii():
        return f'"{quote(name)}"'
    return Header(name, "utf-8").encode()
