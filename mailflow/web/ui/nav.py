"""The UI's navigation: one entry per section, in the order the header shows them.

A section added by a router of its own adds one :class:`NavItem` here; ``admin``: shown
to site admins only (the pages check again: hiding a link is not access control).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from mailflow.services.access import Principal


@dataclass(frozen=True, slots=True)
class NavItem:
    label: str
    path: str
    admin: bool = False


@dataclass(frozen=True, slots=True)
class NavLink:
    label: str
    path: str
    current: bool


NAV: Final = (
    NavItem("Dashboard", "/ui/"),
    NavItem("Domains", "/ui/domains", admin=True),
    NavItem("Lists", "/ui/lists"),
    NavItem("Users", "/ui/users", admin=True),
    NavItem("Audit log", "/ui/audit", admin=True),
    NavItem("Moderation", "/ui/moderation"),
    NavItem("Trace", "/ui/trace"),
    NavItem("Rules", "/ui/rules"),
    NavItem("Queue", "/ui/queue"),
    NavItem("Suppressions", "/ui/suppressions"),
    NavItem("DKIM", "/ui/dkim", admin=True),
    NavItem("Tokens", "/ui/tokens"),
)


def nav_for(caller: Principal, path: str) -> list[NavLink]:
    """The entries ``caller`` sees; the one ``path`` is in is current."""
    def current(item: NavItem) -> bool:
        return path == item.path or (item.path != "/ui/" and path.startswith(item.path))

    return [NavLink(i.label, i.path, current(i)) for i in NAV
            if caller.is_admin or not i.admin]
