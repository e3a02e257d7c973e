"""RFC 2369/2919/8058 list fields of a copy sent through a list (aliases add none).

An incoming copy of another list's fields would contradict ours, so they are replaced.
A shared copy's ``List-Unsubscribe`` names the ``LIST-leave@`` address and the list's
page; a copy rendered for one member also carries that member's one-click URL with
``List-Unsubscribe-Post`` (RFC 8058), which a mail client may POST to without asking.
"""

from __future__ import annotations

from mailflow.headers import display_phrase
from mailflow.model import GENERATED, ListKind, MailingList
from mailflow.pipeline.context import CopyContext, Identity
from mailflow.pipeline.send.list_links import links

LIST_FIELDS = ("List-Id", "List-Post", "List-Help", "List-Subscribe", "List-Unsubscribe",
               "List-Unsubscribe-Post", "List-Archive", "List-Owner", "Precedence")
ONE_CLICK = "List-Unsubscribe=One-Click"


def list_headers(copy: CopyContext) -> None:
    mailing_list = copy.mailing_list
    if mailing_list.kind is not ListKind.LIST or copy.message.protocol == GENERATED:
        return  # an auto-reply from a list is not a post to it
    member = copy.member.address if copy.member is not None else None
    copy.added.extend(list_fields(mailing_list, copy.identity, member))
    copy.removed.extend(LIST_FIELDS)


def list_fields(mailing_list: MailingList, identity: Identity, member: str | None = None
                ) -> list[str]:
    """The fields, folded with ``\\n`` (the copy's line ending replaces it)."""
    found = links(mailing_list, identity, member)
    label = f"{display_phrase(mailing_list.name)} " if mailing_list.name else ""
    fields = [f"List-Id: {label}<{mailing_list.list_id}>",
              f"List-Post: <mailto:{found.post}>",
              f"List-Help: <mailto:{found.help}?subject=help>",
              _uris("List-Subscribe", f"mailto:{found.subscribe}", found.page_url)]
    leave = f"mailto:{found.unsubscribe}"
    if found.one_click_url:
        fields.append(_uris("List-Unsubscribe", found.one_click_url, leave))
        fields.append(f"List-Unsubscribe-Post: {ONE_CLICK}")
    else:
        fields.append(_uris("List-Unsubscribe", leave, found.page_url))
    archive = mailing_list.decoration.archive_url
    if archive:
        fields.append(f"List-Archive: <{archive}>")
    fields.append("Precedence: list")
    return fields


def _uris(name: str, *uris: str) -> str:
    """One field of angle-bracketed URIs, one per line (a one-click URL is long)."""
    return f"{name}: " + ",\n ".join(f"<{uri}>" for uri in uris if uri)

