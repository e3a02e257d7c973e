"""The rules editors of a list or alias: block and allow entries for it, its filter
rules (added with the same validation as ``mailflow filter add``), and its auto-reply;
through the directory service, as ``/api/v1/sender-rules``, ``…/filters`` and
``…/autoreply`` do.

Reading a list's rules needs a role on it; changing them, its owner (or a site admin),
as in the API.  Every change goes to the audit log under the API's action names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Final

from fastapi import APIRouter, Path, Request, Response

from mailflow.errors import InvalidInput, NotFound
from mailflow.model import (
    FilterAction,
    FilterCondition,
    ListRole,
    MailingList,
    RuleAction,
    TokenScope,
)
from mailflow.pipeline.accept.filters import describe
from mailflow.services.directory import (
    AUTOREPLY_BODY_MAX,
    AUTOREPLY_DEFAULT_SUBJECT,
    validated_action,
    validated_rule_target,
)
from mailflow.web.ui import ops_format  # noqa: F401  (the templates' time filters)
from mailflow.web.ui.deps import (
    FieldErrors,
    Flash,
    UiCaller,
    UiDeps,
    UiForm,
    UiSession,
    redirect,
    render,
    text_field,
    ui_path,
)

router = APIRouter()
Address = Annotated[str, Path(max_length=320)]
Number = Annotated[int, Path(ge=1, le=10**6)]
# Fields are cut well above what the directory accepts, so that a value too long is
# refused with its message rather than cut short and taken.
FIELD_CUT: Final = 4000

CONDITIONS: Final = (
    (FilterCondition.HEADER.value, "a header field matches (regular expression)"),
    (FilterCondition.BODY.value, "the text matches (regular expression)"),
    (FilterCondition.LARGER_THAN.value, "the message is larger than (bytes)"),
    (FilterCondition.ATTACHMENT.value, "an attachment's type or name matches (* and ?)"),
    (FilterCondition.NOT_ENCRYPTED.value, "the message is not encrypted"),
)
ACTIONS: Final = (
    (FilterAction.HOLD.value, "hold for a moderator"),
    (FilterAction.REJECT.value, "reject (the text is the reply)"),
    (FilterAction.DISCARD.value, "discard silently"),
    (FilterAction.TAG.value, "tag: add a header field to the copies"),
    (FilterAction.STRIP.value, "strip the attachments the condition names"),
)


@dataclass(slots=True)
class Values:
    """What the forms show again after an error (field name -> text)."""

    fields: dict[str, str] = field(default_factory=dict)

    def get(self, name: str, default: str = "") -> str:
        return self.fields.get(name, default)


async def _page(request: Request, caller: UiSession, deps: UiDeps, target: MailingList, *,
                values: Values | None = None, errors: FieldErrors | None = None,
                status: int = 200) -> Response:
    entries = await deps.read(deps.directory.sender_rules, None, target.address)
    filters = await deps.read(deps.directory.filter_rules, target.address)
    reply = await deps.read(deps.directory.get_autoreply, target.address)
    principal = caller.principal
    may_change = principal.scope is TokenScope.WRITE and (
        principal.is_admin or principal.roles.get(target.address) is ListRole.OWNER)
    return render(request, "rules.html", caller, {
        "title": f"Rules of {target.address}", "target": target, "entries": entries,
        "filters": [(n, r, describe(r)) for n, r in enumerate(filters, start=1)],
        "reply": reply, "conditions": CONDITIONS, "actions": ACTIONS,
        "may_change": may_change,
        "default_subject": AUTOREPLY_DEFAULT_SUBJECT,
        "values": values or Values(), "errors": errors or FieldErrors()}, status=status)


async def _failed(request: Request, caller: UiSession, deps: UiDeps, target: MailingList,
                  form_values: dict[str, str], name: str, exc: Exception) -> Response:
    errors = FieldErrors()
    errors.add(name, str(exc))
    return await _page(request, caller, deps, target, values=Values(form_values),
                       errors=errors, status=422)


async def _index(request: Request, caller: UiSession, deps: UiDeps, *,
                 values: Values | None = None, errors: FieldErrors | None = None,
                 status: int = 200) -> Response:
    found = [m for m, _ in await deps.read(deps.directory.lists)
             if caller.principal.may_read_list(m.address)]
    principal = caller.principal
    # Entries for every recipient or a domain are a site admin's (as in the API).
    wide = ([r for r in await deps.read(deps.directory.sender_rules) if "@" not in r.target]
            if principal.is_admin else [])
    return render(request, "rules_index.html", caller, {
        "title": "Rules", "lists": found, "wide": wide,
        "may_change_wide": principal.is_admin and principal.scope is TokenScope.WRITE,
        "values": values or Values(), "errors": errors or FieldErrors()}, status=status)


@router.get("/rules")
async def rules_index(request: Request, caller: UiCaller, deps: UiDeps) -> Response:
    """The lists and aliases whose rules the caller may see; for a site admin, also the
    block and allow entries for every recipient and for each domain."""
    return await _index(request, caller, deps)


def _require_wide(caller: UiSession) -> None:
    caller.principal.require_write()
    caller.principal.require_admin()


@router.post("/rules/senders")
async def add_wide_sender(request: Request, caller: UiCaller, deps: UiDeps,
                          form: UiForm) -> Response:
    """A block or allow entry for every recipient (no domain) or for one domain, as
    ``mailflow block|allow add PATTERN [--for DOMAIN]``."""
    _require_wide(caller)
    given = {"sender_action": text_field(form, "sender_action", 10),
             "sender_pattern": text_field(form, "sender_pattern", FIELD_CUT),
             "sender_domain": text_field(form, "sender_domain", FIELD_CUT)}
    name = "sender_action"  # the field an error is shown at
    try:
        validated_action(given["sender_action"])
        name = "sender_domain"
        if "@" in given["sender_domain"]:
            raise InvalidInput("a domain, not an address: a list's entries are on its own "
                               "rules page")
        target = validated_rule_target(given["sender_domain"])
        name = "sender_pattern"
        rule = await deps.write(deps.directory.add_sender_rule, given["sender_action"],
                                given["sender_pattern"], target)
    except (InvalidInput, NotFound) as exc:
        errors = FieldErrors()
        errors.add(name, str(exc))
        return await _index(request, caller, deps, values=Values(given), errors=errors,
                            status=422)
    await deps.changed(caller.principal, f"sender_rule.{rule.action.value}", rule.target,
                       rule.pattern)
    verb = "Blocked" if rule.action is RuleAction.BLOCK else "Allowed"
    where = f"for {rule.target}" if rule.target else "for every recipient"
    return redirect(request, ui_path("rules"), Flash("ok", f"{verb} {rule.pattern} {where}."))


@router.post("/rules/senders/remove")
async def remove_wide_sender(request: Request, caller: UiCaller, deps: UiDeps,
                             form: UiForm) -> Response:
    _require_wide(caller)
    action = text_field(form, "action", 10)
    pattern = text_field(form, "pattern", FIELD_CUT)
    domain = text_field(form, "target", FIELD_CUT)
    try:
        if "@" in domain:
            raise InvalidInput("a domain, not an address")
        target = validated_rule_target(domain)
        await deps.write(deps.directory.remove_sender_rule, action, pattern, target)
    except (InvalidInput, NotFound) as exc:
        return redirect(request, ui_path("rules"), Flash("error", str(exc)))
    await deps.changed(caller.principal, f"sender_rule.remove_{action}", target, pattern)
    return redirect(request, ui_path("rules"), Flash("ok", f"Removed the {action} entry "
                                                           f"{pattern}."))


@router.get("/rules/{address}")
async def rules_page(address: Address, request: Request, caller: UiCaller, deps: UiDeps
                     ) -> Response:
    return await _page(request, caller, deps, await deps.visible_list(caller.principal, address))


def _back(target: MailingList) -> str:
    return ui_path("rules", target.address)


# -- block and allow entries ------------------------------------------------------------

@router.post("/rules/{address}/senders")
async def add_sender(address: Address, request: Request, caller: UiCaller, deps: UiDeps,
                     form: UiForm) -> Response:
    target = await deps.visible_list(caller.principal, address, change=True)
    action = text_field(form, "sender_action", 10)
    pattern = text_field(form, "sender_pattern", FIELD_CUT)
    try:
        rule = await deps.write(deps.directory.add_sender_rule, action, pattern,
                                target.address)
    except InvalidInput as exc:
        return await _failed(request, caller, deps, target, {
            "sender_action": action, "sender_pattern": pattern}, "sender_pattern", exc)
    await deps.changed(caller.principal, f"sender_rule.{rule.action.value}", rule.target,
                       rule.pattern)
    verb = "Blocked" if rule.action is RuleAction.BLOCK else "Allowed"
    return redirect(request, _back(target), Flash("ok", f"{verb} {rule.pattern}."))


@router.post("/rules/{address}/senders/remove")
async def remove_sender(address: Address, request: Request, caller: UiCaller, deps: UiDeps,
                        form: UiForm) -> Response:
    target = await deps.visible_list(caller.principal, address, change=True)
    action = text_field(form, "action", 10)
    pattern = text_field(form, "pattern", FIELD_CUT)
    try:
        await deps.write(deps.directory.remove_sender_rule, action, pattern, target.address)
    except (InvalidInput, NotFound) as exc:
        return redirect(request, _back(target), Flash("error", str(exc)))
    await deps.changed(caller.principal, f"sender_rule.remove_{action}", target.address,
                       pattern)
    return redirect(request, _back(target), Flash("ok", f"Removed the {action} entry "
                                                        f"{pattern}."))


# -- filter rules -----------------------------------------------------------------------

def _filter_arguments(condition: str, header: str, value: str) -> dict[str, Any]:
    """The form's one condition as ``add_filter_rule``'s (and ``filter add``'s) options."""
    if condition == FilterCondition.HEADER.value:
        return {"header": header, "matches": value}
    if condition == FilterCondition.BODY.value:
        return {"body": value}
    if condition == FilterCondition.LARGER_THAN.value:
        if not value.strip().isdigit() or len(value.strip()) > 16:
            raise InvalidInput(f"invalid size {value[:40]!r}: a number of bytes")
        return {"larger_than": int(value.strip())}
    if condition == FilterCondition.ATTACHMENT.value:
        return {"attachment": value}
    if condition == FilterCondition.NOT_ENCRYPTED.value:
        return {"not_encrypted": True}
    raise InvalidInput(f"invalid condition {condition!r}: one of "
                       f"{', '.join(c for c, _ in CONDITIONS)}")


@router.post("/rules/{address}/filters")
async def add_filter(address: Address, request: Request, caller: UiCaller, deps: UiDeps,
                     form: UiForm) -> Response:
    target = await deps.visible_list(caller.principal, address, change=True)
    given = {name: text_field(form, name, FIELD_CUT) for name in (
        "filter_condition", "filter_header", "filter_value", "filter_action", "filter_text",
        "filter_add_header")}
    try:
        options = _filter_arguments(given["filter_condition"], given["filter_header"],
                                    given["filter_value"])
        rule = await deps.write(
            deps.directory.add_filter_rule, target.address, given["filter_action"],
            text=given["filter_text"], add_header=given["filter_add_header"] or None,
            **options)
    except InvalidInput as exc:
        return await _failed(request, caller, deps, target, given, "filter_value", exc)
    await deps.changed(caller.principal, "filter.add", target.address,
                       f"{rule.condition.value} {rule.header} {rule.argument} -> "
                       f"{rule.action.value}")
    return redirect(request, _back(target), Flash(
        "ok", f"Added the rule: {describe(rule)} -> {rule.action.value}."))


@router.post("/rules/{address}/filters/{number}/remove")
async def remove_filter(address: Address, number: Number, request: Request,
                        caller: UiCaller, deps: UiDeps) -> Response:
    target = await deps.visible_list(caller.principal, address, change=True)
    try:
        rule = await deps.write(deps.directory.remove_filter_rule, target.address, number)
    except NotFound as exc:
        return redirect(request, _back(target), Flash("error", str(exc)))
    await deps.changed(caller.principal, "filter.remove", target.address,
                       f"{number}: {rule.condition.value} {rule.argument}")
    return redirect(request, _back(target), Flash(
        "ok", f"Removed rule {number}: {describe(rule)}."))


# -- auto-reply -------------------------------------------------------------------------

@router.post("/rules/{address}/autoreply")
async def set_autoreply(address: Address, request: Request, caller: UiCaller, deps: UiDeps,
                        form: UiForm) -> Response:
    target = await deps.visible_list(caller.principal, address, change=True)
    given = {"reply_subject": text_field(form, "reply_subject", FIELD_CUT),
             "reply_body": text_field(form, "reply_body", 2 * AUTOREPLY_BODY_MAX),
             "reply_starts": text_field(form, "reply_starts", 100),
             "reply_ends": text_field(form, "reply_ends", 100),
             "reply_days": text_field(form, "reply_days", 10)}
    try:
        days = given["reply_days"].strip() or "7"
        if not days.isdigit() or not 1 <= int(days) <= 365:
            raise InvalidInput(f"invalid interval {days!r}: a number of days from 1 to 365")
        reply = await deps.write(
            deps.directory.set_autoreply, target.address, body=given["reply_body"],
            subject=given["reply_subject"].strip() or AUTOREPLY_DEFAULT_SUBJECT,
            starts=given["reply_starts"].strip() or None,
            ends=given["reply_ends"].strip() or None, once_per_days=int(days))
    except InvalidInput as exc:
        return await _failed(request, caller, deps, target, given, "reply_body", exc)
    await deps.changed(caller.principal, "autoreply.set", target.address, reply.subject)
    return redirect(request, _back(target), Flash("ok", "The auto-reply is set."))


@router.post("/rules/{address}/autoreply/clear")
async def clear_autoreply(address: Address, request: Request, caller: UiCaller,
                          deps: UiDeps) -> Response:
    target = await deps.visible_list(caller.principal, address, change=True)
    if not await deps.write(deps.directory.clear_autoreply, target.address):
        return redirect(request, _back(target), Flash("warn", "There was no auto-reply."))
    await deps.changed(caller.principal, "autoreply.clear", target.address)
    return redirect(request, _back(target), Flash("ok", "The auto-reply is off."))
