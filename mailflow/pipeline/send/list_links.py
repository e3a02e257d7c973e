"""The addresses and URLs a list's copies point at (RFC 2369, RFC 8058).

One place for them, as the List-* fields, the footer templates (``unsubscribe_url``) and
the web routes that answer the URLs must agree: ``LIST-request@`` for help,
``LIST-join@`` and ``LIST-leave@`` for subscribing by mail, the list's page
``{public_url}/lists/{list}`` and, for a copy rendered for one member, the one-click
``{public_url}/lists/{list}/unsubscribe/{token}``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

from mailflow import addresses
from mailflow.model import MailingList
from mailflow.pipeline.context import Identity

REQUEST_SUFFIX: Final = "-request"
JOIN_SUFFIX: Final = "-join"
LEAVE_SUFFIX: Final = "-leave"
LINKS_KEPT: Final = 256  # a few hundred short strings each


def role_address(list_address: str, suffix: str) -> str:
    """``team-join@example.org`` for ``team@example.org`` and ``-join``."""
    local, domain = addresses.split(list_address)
    return f"{local}{suffix}@{domain}"


def list_path(list_address: str) -> str:
    """The list's page below the public URL (the address needs no escaping but ``+``)."""
    return f"/lists/{quote(list_address, safe='@')}"


def list_page_url(public_url: str, list_address: str) -> str:
    """The list's page in full; '' without a public URL (``public_url`` unset)."""
    return f"{public_url}{list_path(list_address)}" if public_url else ""


@dataclass(frozen=True, slots=True)
class ListLinks:
    """What one copy of ``mailing_list`` links to (for ``member``, if rendered for one)."""

    post: str
    help: str
    subscribe: str
    unsubscribe: str
    page_url: str           # '' without a public URL
    one_click_url: str      # '' for a shared copy, or without a public URL or tokens

    @property
    def unsubscribe_url(self) -> str:
        """The link a footer offers: one-click when per member, else the list's page."""
        return self.one_click_url or self.page_url


@functools.lru_cache(maxsize=LINKS_KEPT)
def links(mailing_list: MailingList, identity: Identity, member: str | None = None
          ) -> ListLinks:
    """Remembered: a copy asks twice (its List-* fields, then its footer), and a
    member's token is an HMAC."""
    address = mailing_list.address
    page = list_page_url(identity.public_url, address)
    one_click = ""
    if member is not None and page and identity.unsubscribe is not None:
        token = identity.unsubscribe.token(address, addresses.canonical(member))
        one_click = f"{page}/unsubscribe/{token}"
    return ListLinks(post=address, help=role_address(address, REQUEST_SUFFIX),
                     subscribe=role_address(address, JOIN_SUFFIX),
                     unsubscribe=role_address(address, LEAVE_SUFFIX),
                     page_url=page, one_click_url=one_click)
