"""RFC 2369/2919 list fields of a copy sent through a list (aliases add none).

An incoming copy of another list's fields would contradict ours, so they are replaced.
"""

from __future__ import annotations

from mailflow.headers import display_phrase
from mailflow.model import GENERATED, ListKind
from mailflow.pipeline.context import CopyContext

LIST_FIELDS = ("List-Id", "List-Post")


def list_headers(copy: CopyContext) -> None:
    mailing_list = copy.mailing_list
    if mailing_list.kind is not ListKind.LIST or copy.message.protocol == GENERATED:
        return  # an auto-reply from a list is not a post to it
    label = f"{display_phrase(mailing_list.name)} " if mailing_list.name else ""
    copy.added.append(f"List-Id: {label}<{mailing_list.list_id}>")
    copy.added.append(f"List-Post: <mailto:{mailing_list.address}>")
    copy.removed.extend(LIST_FIELDS)

