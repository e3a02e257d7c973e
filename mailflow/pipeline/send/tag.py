"""The plus tag a copy's alias or list was reached by: ``X-MailFlow-Tag``.

``alias+tag@d`` reaches ``alias@d`` (the store resolves it, only for a tag of
:data:`~mailflow.addresses.TAG_CHARACTERS`, at most
:data:`~mailflow.addresses.TAG_MAX_LENGTH` long), so the tag needs no other encoding here.
The message's recipients say which tag: the first recipient in envelope order that is
the copy's address with a tag, unless the address itself was a recipient too (then the
copy is the untagged one).  Any ``X-MailFlow-Tag`` the message came with is dropped: a
sender must not choose the tag a target's filters see.
"""

from __future__ import annotations

from typing import Final

from mailflow import addresses
from mailflow.pipeline.context import CopyContext

TAG_HEADER: Final = "X-MailFlow-Tag"


def copy_tag(rcpt_tos: tuple[str, ...], list_address: str) -> str:
    """The tag ``list_address`` was reached by among ``rcpt_tos``; '' for none."""
    tag = ""
    for rcpt in rcpt_tos:
        canonical = addresses.canonical(rcpt)
        if canonical == list_address:
            return ""
        base, found = addresses.untagged(canonical)
        if found and base == list_address and not tag:
            tag = found
    return tag


def plus_tag(copy: CopyContext) -> None:
    copy.removed.append(TAG_HEADER)
    tag = copy_tag(copy.message.rcpt_tos, copy.mailing_list.address)
    if tag:
        copy.added.append(f"{TAG_HEADER}: {tag}")
