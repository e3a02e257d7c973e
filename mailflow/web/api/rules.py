"""Rules: block and allow entries (``/sender-rules``), filter rules and auto-replies of
a list (``/lists/{address}/filters``, ``/lists/{address}/autoreply``).

An entry for every recipient or for a domain is a site admin's; one for a list is its
owner's too.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field

from mailflow.errors import NotFound
from mailflow.model import AutoReply, FilterAction, FilterCondition, FilterRule, RuleAction
from mailflow.services.access import Principal
from mailflow.services.directory import (
    AUTOREPLY_DEFAULT_SUBJECT,
    validated_rule_target,
)
from mailflow.web.api.deps import Caller, Deps, Writer
from mailflow.web.api.lists import ListAddress
from mailflow.web.api.pages import Cursor, Limit, Page, page_in_memory

router = APIRouter(tags=["rules"])
Target = Annotated[str | None, Query(alias="for", max_length=320, description=(
    "a served domain or a list or alias address; left out: every recipient"))]


def _require_target(caller: Principal, target: str, *, change: bool) -> None:
    """A list's entries are its owner's business; wider ones a site admin's."""
    if "@" in target:
        caller.require_list(target, change=change)
    else:
        if change:
            caller.require_write()
        caller.require_admin()


class SenderRuleOut(BaseModel):
    action: RuleAction
    pattern: str
    target: str = Field(description="'' for every recipient, a domain, or an address")
    scope: str
    created_at: float


class SenderRuleIn(BaseModel):
    action: RuleAction
    pattern: str = Field(max_length=320, examples=["*@spam.example"])
    target: str = Field(default="", max_length=320)


@router.get("/sender-rules")
async def list_sender_rules(deps: Deps, caller: Caller, cursor: Cursor = None,
                            limit: Limit = 50, action: RuleAction | None = None,
                            target: Target = None) -> Page[SenderRuleOut]:
    """Block and allow entries, widest scope first."""
    if target is not None:
        _require_target(caller, validated_rule_target(target), change=False)
    found = await deps.read(deps.directory.sender_rules, action, target)
    visible = [r for r in found if caller.is_admin or caller.may_read_list(r.target)]
    items, more = page_in_memory(
        visible, lambda r: f"{r.scope.value}|{r.target}|{r.pattern}|{r.action.value}",
        cursor, limit)
    return Page[SenderRuleOut](items=[
        SenderRuleOut(action=r.action, pattern=r.pattern, target=r.target,
                      scope=r.scope.name.lower(), created_at=r.created_at)
        for r in items], next_cursor=more)


@router.post("/sender-rules", status_code=201)
async def add_sender_rule(body: SenderRuleIn, deps: Deps, caller: Writer) -> SenderRuleOut:
    target = validated_rule_target(body.target)
    _require_target(caller, target, change=True)
    rule = await deps.write(deps.directory.add_sender_rule, body.action, body.pattern, target)
    await deps.changed(caller, f"sender_rule.{rule.action.value}", rule.target, rule.pattern)
    return SenderRuleOut(action=rule.action, pattern=rule.pattern, target=rule.target,
                         scope=rule.scope.name.lower(), created_at=rule.created_at)


@router.delete("/sender-rules", status_code=204)
async def remove_sender_rule(deps: Deps, caller: Writer, action: RuleAction,
                             pattern: Annotated[str, Query(max_length=320)],
                             target: Target = None) -> Response:
    valid_target = validated_rule_target(target)
    _require_target(caller, valid_target, change=True)
    await deps.write(deps.directory.remove_sender_rule, action, pattern, valid_target)
    await deps.changed(caller, f"sender_rule.remove_{action.value}", valid_target, pattern)
    return Response(status_code=204)


# -- filter rules -----------------------------------------------------------------------

class FilterOut(BaseModel):
    number: int = Field(description="its place in the order they are tried, from 1")
    condition: FilterCondition
    header: str
    argument: str
    action: FilterAction
    text: str
    created_at: float

    @classmethod
    def of(cls, number: int, rule: FilterRule) -> FilterOut:
        return cls(number=number, condition=rule.condition, header=rule.header,
                   argument=rule.argument, action=rule.action, text=rule.text,
                   created_at=rule.created_at)


class FilterIn(BaseModel):
    """One condition (``header`` with ``matches``, ``body``, ``larger_than``,
    ``attachment`` or ``not_encrypted``) and what to do when it holds."""

    action: FilterAction
    text: str = Field(default="", max_length=500)
    header: str | None = Field(default=None, max_length=200)
    matches: str | None = Field(default=None, max_length=1000)
    body: str | None = Field(default=None, max_length=1000)
    larger_than: int | None = Field(default=None, ge=0, le=2**53)
    attachment: str | None = Field(default=None, max_length=320)
    not_encrypted: bool = False


@router.get("/lists/{address}/filters")
async def list_filters(address: ListAddress, deps: Deps, caller: Caller,
                       cursor: Cursor = None, limit: Limit = 50) -> Page[FilterOut]:
    """A list's filter rules in the order they are tried (the first match decides)."""
    found = await deps.visible_list(caller, address)
    rules = await deps.read(deps.directory.filter_rules, found.address)
    numbered = list(enumerate(rules, start=1))
    items, more = page_in_memory(numbered, lambda pair: f"{pair[0]:06d}", cursor, limit)
    return Page[FilterOut](items=[FilterOut.of(n, r) for n, r in items], next_cursor=more)


@router.post("/lists/{address}/filters", status_code=201)
async def add_filter(address: ListAddress, body: FilterIn, deps: Deps,
                     caller: Writer) -> FilterOut:
    """Add a rule after the list's others."""
    found = await deps.visible_list(caller, address, change=True)
    rule = await deps.write(
        deps.directory.add_filter_rule, found.address, body.action, text=body.text,
        header=body.header, matches=body.matches, body=body.body,
        larger_than=body.larger_than, attachment=body.attachment,
        not_encrypted=body.not_encrypted)
    count = len(await deps.read(deps.directory.filter_rules, found.address))
    await deps.changed(caller, "filter.add", found.address,
                       f"{rule.condition.value} {rule.header} {rule.argument} -> "
                       f"{rule.action.value}")
    return FilterOut.of(count, rule)


@router.delete("/lists/{address}/filters/{number}")
async def remove_filter(address: ListAddress, number: Annotated[int, Path(ge=1, le=10**6)],
                        deps: Deps, caller: Writer) -> FilterOut:
    """Remove the ``number``-th rule (the ones after it move up)."""
    found = await deps.visible_list(caller, address, change=True)
    rule = await deps.write(deps.directory.remove_filter_rule, found.address, number)
    await deps.changed(caller, "filter.remove", found.address,
                       f"{number}: {rule.condition.value} {rule.argument}")
    return FilterOut.of(number, rule)


# -- auto-replies -----------------------------------------------------------------------

class AutoReplyOut(BaseModel):
    subject: str
    body: str
    starts_at: float | None
    ends_at: float | None
    once_per_days: int

    @classmethod
    def of(cls, reply: AutoReply) -> AutoReplyOut:
        return cls(subject=reply.subject, body=reply.body, starts_at=reply.starts_at,
                   ends_at=reply.ends_at, once_per_days=reply.once_per_days)


class AutoReplyIn(BaseModel):
    body: str = Field(max_length=10_000)
    subject: str = Field(default=AUTOREPLY_DEFAULT_SUBJECT, max_length=200)
    starts: str | None = Field(default=None, max_length=40, examples=["2026-12-24"])
    ends: str | None = Field(default=None, max_length=40, examples=["2027-01-02T09:00"])
    once_per_days: int = Field(default=7, ge=1, le=365)


@router.get("/lists/{address}/autoreply")
async def get_autoreply(address: ListAddress, deps: Deps, caller: Caller) -> AutoReplyOut:
    found = await deps.visible_list(caller, address)
    reply = await deps.read(deps.directory.get_autoreply, found.address)
    if reply is None:
        raise NotFound("autoreply", found.address, f"{found.address} has no auto-reply")
    return AutoReplyOut.of(reply)


@router.put("/lists/{address}/autoreply")
async def set_autoreply(address: ListAddress, body: AutoReplyIn, deps: Deps,
                        caller: Writer) -> AutoReplyOut:
    """Turn on (or replace) the out-of-office reply."""
    found = await deps.visible_list(caller, address, change=True)
    reply = await deps.write(deps.directory.set_autoreply, found.address, body=body.body,
                             subject=body.subject, starts=body.starts, ends=body.ends,
                             once_per_days=body.once_per_days)
    await deps.changed(caller, "autoreply.set", found.address, reply.subject)
    return AutoReplyOut.of(reply)


@router.delete("/lists/{address}/autoreply", status_code=204)
async def clear_autoreply(address: ListAddress, deps: Deps, caller: Writer) -> Response:
    found = await deps.visible_list(caller, address, change=True)
    if not await deps.write(deps.directory.clear_autoreply, found.address):
        raise NotFound("autoreply", found.address, f"{found.address} has no auto-reply")
    await deps.changed(caller, "autoreply.clear", found.address)
    return Response(status_code=204)
