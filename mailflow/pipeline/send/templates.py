"""A list's header and footer templates: Jinja2 in a sandbox, and a small safe subset.

Whoever may change a list (its owner, through the CLI now and the REST API next) writes
text that the relay renders for every copy, so a template must neither reach into the
relay (Jinja2's ``SandboxedEnvironment`` refuses attributes such as ``__class__`` and
unsafe methods at render time) nor spend its CPU or memory: loops, macros, calls,
``*``/``**`` and all but a few filters are refused when the template is set, so its
output is bounded by its own length and the values it names.  A template is checked by
compiling it and rendering it once with sample values; the directory turns a refusal
into a clear error.

Templates render plain text; an HTML part gets that text escaped, with line breaks and
links kept (``as_html``).
"""

from __future__ import annotations

import functools
import html
import logging
import re
from collections.abc import Mapping
from typing import Any, Final

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError, nodes
from jinja2.sandbox import SandboxedEnvironment

log = logging.getLogger(__name__)

ALLOWED_FILTERS: Final = frozenset({
    "capitalize", "d", "default", "e", "escape", "length", "lower", "string", "striptags",
    "title", "trim", "truncate", "upper", "urlencode"})
_REFUSED_NODES: Final = (
    (nodes.For, "loops"), (nodes.Macro, "macros"), (nodes.CallBlock, "call blocks"),
    (nodes.Call, "calls"), (nodes.Include, "includes"), (nodes.Import, "imports"),
    (nodes.FromImport, "imports"), (nodes.Extends, "extends"), (nodes.Mul, "'*'"),
    (nodes.Pow, "'**'"), (nodes.FilterBlock, "filter blocks"))
TEMPLATES_KEPT: Final = 256  # compiled templates (each source at most a few KB)
_LINK: Final = re.compile(r"https?://[^\s<>&\"']+")

_ENVIRONMENT: Final = SandboxedEnvironment(autoescape=False, keep_trailing_newline=True,
                                           undefined=StrictUndefined)
_ENVIRONMENT.filters = {name: f for name, f in _ENVIRONMENT.filters.items()
                        if name in ALLOWED_FILTERS}


class UnsafeTemplate(ValueError):
    """A template the relay will not render (why is in the text)."""


def sample_variables() -> dict[str, Any]:
    """Values of every name a template may use, as a check renders them."""
    return variables(name="Example", address="team@example.org", list_id="team.example.org",
                     page_url="https://lists.example.org/lists/team@example.org",
                     member_address="someone@example.org", member_name="Someone",
                     unsubscribe_url="https://lists.example.org/lists/team@example.org")


def variables(*, name: str, address: str, list_id: str, page_url: str, member_address: str,
              member_name: str, unsubscribe_url: str) -> dict[str, Any]:
    """The names a template sees: ``list`` (with its robot addresses), ``member`` (empty
    for a shared copy) and ``unsubscribe_url``."""
    local, _, domain = address.rpartition("@")
    return {
        "list": {"name": name, "address": address, "id": list_id, "url": page_url,
                 "request": f"{local}-request@{domain}", "join": f"{local}-join@{domain}",
                 "leave": f"{local}-leave@{domain}", "owner": f"{local}-owner@{domain}"},
        "member": {"address": member_address, "name": member_name},
        "unsubscribe_url": unsubscribe_url,
    }


def check(source: str) -> None:
    """Raise :class:`UnsafeTemplate` unless ``source`` compiles, keeps to the safe
    subset and renders with sample values."""
    try:
        tree = _ENVIRONMENT.parse(source)
    except TemplateSyntaxError as exc:
        raise UnsafeTemplate(f"line {exc.lineno}: {exc.message}") from None
    for node_type, what in _REFUSED_NODES:
        found = next(tree.find_all(node_type), None)
        if found is not None:
            raise UnsafeTemplate(f"line {found.lineno}: {what} are not allowed in a "
                                 "list template")
    for node in tree.find_all(nodes.Filter):
        if node.name not in ALLOWED_FILTERS:
            raise UnsafeTemplate(f"line {node.lineno}: the filter {node.name!r} is not "
                                 f"allowed (allowed: {', '.join(sorted(ALLOWED_FILTERS))})")
    try:
        _compiled(source).render(sample_variables())
    except TemplateError as exc:  # the sandbox's SecurityError is one
        raise UnsafeTemplate(str(exc)) from None


def render(source: str, values: Mapping[str, Any]) -> str:
    """The template's text for one copy; '' if it fails (logged): a template checked
    when set can still meet a value it did not expect, and a copy goes out regardless."""
    if not source:
        return ""
    try:
        return str(_compiled(source).render(values))
    except Exception as exc:
        log.warning("list template not rendered: %s", exc,
                    extra={"action": "template_error"})
        return ""


def as_html(text: str) -> str:
    """Template text for an HTML part: escaped, links kept, line breaks as ``<br>``."""
    escaped = html.escape(text.strip("\r\n"))
    linked = _LINK.sub(lambda m: f'<a href="{m.group(0)}">{m.group(0)}</a>', escaped)
    return linked.replace("\n", "<br>\n")


@functools.lru_cache(maxsize=TEMPLATES_KEPT)
def _compiled(source: str) -> Template:
    return _ENVIRONMENT.from_string(source)


@functools.lru_cache(maxsize=TEMPLATES_KEPT)
def reads_member_name(source: str) -> bool:
    """Whether ``source`` may show the member's name: anything it does with ``member``
    but read ``member.address``.  A personalized copy's name is a look-up in the store
    per copy; a template that names only the address (the usual footer) needs none."""
    if "member" not in source:
        return False
    try:
        tree = _ENVIRONMENT.parse(source)
    except TemplateSyntaxError:
        return True
    addressed = {id(node.node) for node in tree.find_all(nodes.Getattr)
                 if isinstance(node.node, nodes.Name) and node.node.name == "member"
                 and node.attr == "address"}
    return any(node.name == "member" and id(node) not in addressed
               for node in tree.find_all(nodes.Name))
