"""The lists pages: every list the caller may see, creating one, and its settings.

The settings form is grouped by purpose.  Each field is checked by the directory's own
validator (the one ``mailflow list update`` and the API reach), so its error is the
CLI's, shown next to the field; the change itself is one ``update_list`` call, which
checks again, together with what depends on more than one field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from fastapi import APIRouter, Query, Request, Response

from mailflow.errors import Conflict, InvalidInput, NotFound
from mailflow.model import (
    DmarcMode,
    ForwardStyle,
    ListKind,
    ListRole,
    MailingList,
    NonMemberAction,
    PostingPolicy,
)
from mailflow.services import directory as checks
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


@dataclass(frozen=True, slots=True)
class Setting:
    """One field of the settings form: how it is shown, read from a list, and checked."""

    name: str
    label: str
    help: str
    kind: str  # text | number | select | checkbox | textarea
    value: Callable[[MailingList], Any]
    check: Callable[[str], Any]  # the form's text -> the value for update_list
    choices: tuple[tuple[str, str], ...] = ()


def _number(cast: Callable[[str], Any], what: str, check: Callable[[Any], Any]
            ) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = cast(text.strip())
        except ValueError:
            raise InvalidInput(f"invalid {what} {text!r}: write a number") from None
        return check(value)
    return parse


def _decoration(key: str) -> Callable[[str], Any]:
    return lambda text: checks.validated_decoration(**{key: text})[key]


def _choices(kind: type[Any], texts: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple((member.value, texts[member.value]) for member in kind)


GENERAL: Final = (
    Setting("name", "Display name", "Shown in the list's pages and used in templates as "
            "{{ list.name }}.", "text", lambda m: m.name, checks.validated_list_name),
    Setting("priority", "Priority", "Copies of a list with a higher priority leave the "
            "queue first (-1000 to 1000; 0 is normal).", "number", lambda m: m.priority,
            _number(int, "priority", checks.validated_priority)),
)
POSTING: Final = (
    Setting("posting", "Who may post", "Open: anyone. Members: members only. Moderated: "
            "every post waits for a moderator. Announce: owners and moderators only.",
            "select", lambda m: m.posting.value, checks.validated_posting,
            _choices(PostingPolicy, {"open": "Anyone (open)", "members": "Members only",
                                     "moderated": "Everyone, after moderation",
                                     "announce": "Owners and moderators (announce)"})),
    Setting("non_member_action", "Posts from others",
            "What happens to a post from someone the posting rule does not admit.",
            "select", lambda m: m.non_member_action.value, checks.validated_non_member_action,
            _choices(NonMemberAction, {"reject": "Refuse it (the sender is told)",
                                       "hold": "Hold it for a moderator",
                                       "discard": "Drop it silently"})),
    Setting("hold_days", "Days a held post waits", "After this many days without a "
            "decision a held post is discarded, and a request to join expires (1 to 365).",
            "number",
            lambda m: m.hold_days, _number(int, "hold time", checks.validated_hold_days)),
)
DECORATION: Final = (
    Setting("subject_prefix", "Subject prefix", "Put before each post's subject, e.g. "
            "[team]; empty: the subject stays as it is.", "text",
            lambda m: m.decoration.subject_prefix, _decoration("subject_prefix")),
    Setting("reply_to", "Replies go to", "none: the post's own Reply-To; list: the list; "
            "or an address.", "text", lambda m: m.decoration.reply_to,
            _decoration("reply_to")),
    Setting("header_template", "Header text", "Put above each post's text (a Jinja2 "
            "template, e.g. {{ list.name }}).", "textarea",
            lambda m: m.decoration.header_template, _decoration("header_template")),
    Setting("footer_template", "Footer text", "Put below each post's text, e.g. how to "
            "leave the list ({{ unsubscribe_url }}).", "textarea",
            lambda m: m.decoration.footer_template, _decoration("footer_template")),
    Setting("archive_url", "Archive URL", "An http(s) or mailto URL for the List-Archive "
            "field; empty: none.", "text", lambda m: m.decoration.archive_url,
            _decoration("archive_url")),
)
DMARC: Final = (
    Setting("dmarc", "Rewrite From:", "When copies carry the list's address in From: so "
            "that receivers checking DMARC accept them. Auto: only for authors whose "
            "domain publishes p=quarantine or p=reject.", "select",
            lambda m: m.dmarc.value, checks.validated_dmarc_mode,
            _choices(DmarcMode, {"never": "Never", "auto": "When the author's domain asks "
                                 "for it (auto)", "always": "Always"})),
)
BOUNCES: Final = (
    Setting("bounce_threshold", "Bounce score limit", "A member whose bounce score reaches "
            "this is disabled (a permanent bounce counts 1, a temporary one 0.5).",
            "number", lambda m: m.bounce_threshold,
            _number(float, "bounce threshold", checks.validated_bounce_threshold)),
)
PERSONALIZATION: Final = (
    Setting("personalize", "One copy per member", "Each member gets a copy of their own "
            "(their name and unsubscribe link in templates, a VERP return path that names "
            "them in bounces); costs one send per member.", "checkbox",
            lambda m: m.personalize, lambda text: text == "on"),
)
ALIAS: Final = (
    Setting("forward_style", "Forward style", "Resend: the message as it came, in a new "
            "envelope. Fwd: a new message from the alias with the original inside.",
            "select", lambda m: m.forward_style.value, checks.validated_forward_style,
            _choices(ForwardStyle, {"resend": "Resend as received",
                                    "fwd": "Forward as an attachment (Fwd:)"})),
)
GROUPS: Final = (("General", GENERAL), ("Posting", POSTING), ("Decoration", DECORATION),
                 ("DMARC", DMARC), ("Bounces", BOUNCES), ("Personalization",
                                                            PERSONALIZATION))
ALIAS_GROUPS: Final = (("General", GENERAL), ("Forwarding", ALIAS))
DECORATION_KEYS: Final = frozenset(s.name for s in DECORATION)
KIND_TEXT: Final = {"list": "Mailing list", "alias": "Alias", "echo": "Echo (test address)"}


def groups_of(found: MailingList) -> tuple[tuple[str, tuple[Setting, ...]], ...]:
    return GROUPS if found.kind is ListKind.LIST else ALIAS_GROUPS


def may_change(caller: UiSession, address: str) -> bool:
    principal = caller.principal
    return principal.is_admin or principal.roles.get(address) is ListRole.OWNER


# -- the lists ----------------------------------------------------------------------------

async def _lists_page(request: Request, caller: UiSession, deps: UiDeps, q: str = "", *,
                      form: dict[str, str] | None = None, errors: FieldErrors | None = None,
                      status: int = 200) -> Response:
    found = await deps.read(deps.directory.lists)
    needle = q.strip().lower()
    visible = [(m, n) for m, n in found if caller.principal.may_read_list(m.address)
               and (not needle or needle in m.address or needle in m.name.lower())]
    domains = ([d.name for d in await deps.read(deps.directory.domains)]
               if caller.principal.is_admin else [])
    return render(request, "lists.html", caller, {
        "title": "Lists", "lists": visible, "q": q, "kinds": KIND_TEXT, "domains": domains,
        "form": form or {"kind": "list"}, "errors": errors or FieldErrors()}, status=status)


@router.get("/lists")
async def lists_page(request: Request, caller: UiCaller, deps: UiDeps,
                     q: str = Query("", max_length=320)) -> Response:
    return await _lists_page(request, caller, deps, q)


@router.post("/lists")
async def create_list(request: Request, caller: UiCaller, deps: UiDeps, form: UiForm
                      ) -> Response:
    """A new list or alias with the default settings (open posting, no decoration);
    the settings page comes next."""
    caller.principal.require_admin()
    values = {"address": text_field(form, "address", 1000).strip(),
              "kind": text_field(form, "kind", 100) or "list",
              "name": text_field(form, "name", 1000).strip()}
    try:
        created = await deps.write(deps.directory.create_list, values["address"],
                                   kind=values["kind"], name=values["name"])
    except (InvalidInput, Conflict, NotFound) as exc:  # NotFound: a domain not served
        errors = FieldErrors()
        text = str(exc)
        errors.add("kind" if "kind" in text else "name" if "name" in text else "address",
                   text)
        return await _lists_page(request, caller, deps, form=values, errors=errors,
                                 status=422)
    await deps.changed(caller.principal, "list.create", created.address,
                       f"kind={created.kind.value}")
    return redirect(request, ui_path("lists", created.address), Flash(
        "ok", f"Created {created.address} with the default settings: anyone may post, "
        "nothing is added to the copies. Change them below, then add members."))


# -- one list's settings ------------------------------------------------------------------

def _form_values(found: MailingList) -> dict[str, Any]:
    return {s.name: s.value(found) for _, group in groups_of(found) for s in group}


async def _settings_page(request: Request, caller: UiSession, deps: UiDeps,
                         found: MailingList, values: dict[str, Any] | None = None,
                         errors: FieldErrors | None = None, status: int = 200) -> Response:
    count = next((n for m, n in await deps.read(deps.directory.lists)
                  if m.address == found.address), 0)
    return render(request, "list.html", caller, {
        "title": found.name or found.address, "list": found, "member_count": count,
        "groups": groups_of(found), "values": values or _form_values(found),
        "kinds": KIND_TEXT, "can_change": may_change(caller, found.address),
        "errors": errors or FieldErrors()}, status=status)


@router.get("/lists/{address}")
async def list_settings(address: str, request: Request, caller: UiCaller, deps: UiDeps
                        ) -> Response:
    found = await deps.visible_list(caller.principal, address)
    return await _settings_page(request, caller, deps, found)


@router.post("/lists/{address}")
async def update_settings(address: str, request: Request, caller: UiCaller, deps: UiDeps,
                          form: UiForm) -> Response:
    found = await deps.visible_list(caller.principal, address)
    caller.principal.require_list(found.address, change=True)
    values: dict[str, Any] = {}
    checked: dict[str, Any] = {}
    errors = FieldErrors()
    for _, group in groups_of(found):
        for setting in group:
            text = text_field(form, setting.name, 10_000)
            values[setting.name] = text if setting.kind != "checkbox" else text == "on"
            try:
                checked[setting.name] = setting.check(text)
            except InvalidInput as exc:
                errors.add(setting.name, exc)
    if errors:
        return await _settings_page(request, caller, deps, found, values, errors, 422)
    decoration = {k: checked.pop(k) for k in list(checked) if k in DECORATION_KEYS}
    try:
        changed = await deps.write(deps.directory.update_list, found.address,
                                   decoration=decoration or None, **checked)
    except InvalidInput as exc:
        errors.add("", exc)
        return await _settings_page(request, caller, deps, found, values, errors, 422)
    before, after = _form_values(found), _form_values(changed)
    diff = [f"{k}={after[k]!r}" for k in sorted(after) if after[k] != before.get(k)]
    if diff:
        await deps.changed(caller.principal, "list.update", changed.address, " ".join(diff))
    return redirect(request, ui_path("lists", changed.address),
                    Flash("ok", "Settings saved." if diff else "Nothing changed."))


@router.post("/lists/{address}/delete")
async def delete_list(address: str, request: Request, caller: UiCaller, deps: UiDeps,
                      form: UiForm) -> Response:
    caller.principal.require_admin()
    found = await deps.read(deps.directory.get_list, address)
    if text_field(form, "confirm", 1000).strip() != found.address:
        return redirect(request, ui_path("lists", found.address), Flash(
            "error", f"Not deleted: type {found.address} into the box to confirm."))
    failed = await deps.write(deps.directory.delete_list, found.address)
    await deps.changed(caller.principal, "list.delete", found.address,
                       f"failed_deliveries={failed}")
    return redirect(request, ui_path("lists"), Flash("ok", f"Deleted {found.address}."))

