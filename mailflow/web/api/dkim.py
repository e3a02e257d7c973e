"""``/dkim-keys``: the domains' DKIM signing keys (``mailflow dkim``), a site admin's.

A private key never leaves the relay: the answers hold the selector and the DNS TXT
record to publish, nothing else of the key.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from mailflow.model import DkimKey
from mailflow.web.api.deps import Admin, AdminWriter, Deps
from mailflow.web.api.domains import DomainName
from mailflow.web.api.pages import Cursor, Limit, Page, page_in_memory

router = APIRouter(tags=["dkim"])


class DkimKeyOut(BaseModel):
    domain: str
    selector: str
    created_at: float
    dns_name: str = Field(description="where the TXT record goes")
    dns_txt: str = Field(description="the record's value: v=DKIM1; k=rsa; p=…")

    @classmethod
    def of(cls, key: DkimKey) -> DkimKeyOut:
        return cls(domain=key.domain, selector=key.selector, created_at=key.created_at,
                   dns_name=key.dns_name, dns_txt=key.dns_text)


class DkimKeyIn(BaseModel):
    domain: str = Field(max_length=253, examples=["example.org"])
    selector: str | None = Field(default=None, max_length=100, description=(
        "the DNS selector (default: mf and today's date, UTC)"))
    replace: bool = Field(default=False, description=(
        "replace the domain's key (else 409 when it has one)"))


@router.get("/dkim-keys")
async def list_dkim_keys(deps: Deps, caller: Admin, cursor: Cursor = None,
                         limit: Limit = 50) -> Page[DkimKeyOut]:
    """The domains that have a key, by domain, with the DNS record each needs."""
    found = await deps.read(deps.directory.dkim_keys)
    items, more = page_in_memory(found, lambda k: k.domain, cursor, limit)
    return Page[DkimKeyOut](items=[DkimKeyOut.of(k) for k in items], next_cursor=more)


@router.post("/dkim-keys", status_code=201)
async def create_dkim_key(body: DkimKeyIn, deps: Deps, caller: AdminWriter) -> DkimKeyOut:
    """Make a 2048-bit RSA key for a served domain; copies are signed from now on.
    Publish the TXT record the answer holds."""
    key = await deps.write(deps.directory.create_dkim_key, body.domain, body.selector,
                           replace=body.replace)
    await deps.changed(caller, "dkim.create", key.domain,
                       f"selector={key.selector}" + (" replace" if body.replace else ""))
    return DkimKeyOut.of(key)


@router.delete("/dkim-keys/{name}")
async def remove_dkim_key(name: DomainName, deps: Deps, caller: AdminWriter) -> DkimKeyOut:
    """Stop signing the domain's copies and forget its key."""
    key = await deps.write(deps.directory.remove_dkim_key, name)
    await deps.changed(caller, "dkim.remove", key.domain, f"selector={key.selector}")
    return DkimKeyOut.of(key)
