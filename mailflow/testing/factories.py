"""Factories for directory data and messages used by tests and benchmarks."""

from __future__ import annotations

import time
from collections.abc import Sequence
from email.utils import make_msgid

from mailflow import addresses
from mailflow.model import ListKind, MailingList
from mailflow.store.repository import Repository


def make_list(repo: Repository, address: str, members: Sequence[str] = (),
              kind: ListKind = ListKind.LIST, name: str = "", priority: int = 0) -> MailingList:
    """Create a list (and its domain, if needed) with active members."""
    now = time.time()
    domain = addresses.split(address)[1]
    if domain not in {d.name for d in repo.domains()}:
        repo.add_domain(domain, now)
    created = repo.create_list(address, kind, name, priority, now)
    if members:
        repo.add_members(address, members, now)
    return created


def make_message(to: str, *, sender: str = "poster@outside.test", subject: str = "hello",
                 body: bytes = b"Hello list.\r\n", extra_headers: Sequence[str] = ()) -> bytes:
    head = [f"From: {sender}", f"To: {to}", f"Subject: {subject}",
            f"Message-ID: {make_msgid(domain='outside.test')}", *extra_headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body
