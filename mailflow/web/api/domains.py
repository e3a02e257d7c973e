"""``/domains``: the domains the relay serves (site admins change them)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field

from mailflow.model import Domain
from mailflow.web.api.deps import AdminWriter, Caller, Deps
from mailflow.web.api.pages import Cursor, Limit, Page, page_in_memory

router = APIRouter(tags=["domains"])
DomainName = Annotated[str, Path(max_length=253)]


class DomainOut(BaseModel):
    name: str
    created_at: float

    @classmethod
    def of(cls, domain: Domain) -> DomainOut:
        return cls(name=domain.name, created_at=domain.created_at)


class DomainIn(BaseModel):
    name: str = Field(max_length=253, examples=["example.org"])


@router.get("/domains")
async def list_domains(deps: Deps, caller: Caller, cursor: Cursor = None,
                       limit: Limit = 50) -> Page[DomainOut]:
    """Every domain served, by name."""
    found = await deps.read(deps.directory.domains)
    items, more = page_in_memory(found, lambda d: d.name, cursor, limit)
    return Page[DomainOut](items=[DomainOut.of(d) for d in items], next_cursor=more)


@router.post("/domains", status_code=201)
async def add_domain(body: DomainIn, deps: Deps, caller: AdminWriter) -> DomainOut:
    domain = await deps.write(deps.directory.add_domain, body.name)
    await deps.changed(caller, "domain.add", domain.name)
    return DomainOut.of(domain)


@router.delete("/domains/{name}", status_code=204)
async def remove_domain(name: DomainName, deps: Deps, caller: AdminWriter) -> Response:
    """Stop serving a domain; refused (409) while it has lists or aliases."""
    await deps.write(deps.directory.remove_domain, name)
    await deps.changed(caller, "domain.remove", name)
    return Response(status_code=204)
