"""Cursor pagination, the same for every collection.

A page is ``{"items": [...], "next_cursor": "..." | null}``; the next page is the same
request with ``cursor=<next_cursor>``.  A cursor is the sort key of the page's last
item, opaque to clients (URL-safe base64), so a page never skips or repeats an item
when others are added or removed in between, and a deep page costs what the first does.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import Annotated, Final, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

from mailflow.errors import InvalidInput

MAX_LIMIT: Final = 1000
CURSOR_MAX_LENGTH: Final = 1000

T = TypeVar("T")
K = TypeVar("K")

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="items per page")]
Cursor = Annotated[str | None, Query(max_length=CURSOR_MAX_LENGTH,
                                     description="next_cursor of the page before")]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str:
    """The key a cursor names ('' for none); a cursor we did not make is a 422."""
    if not cursor:
        return ""
    try:
        return base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_",
                                validate=True).decode()
    except (binascii.Error, ValueError):
        raise InvalidInput(f"invalid cursor {cursor[:50]!r}: pass next_cursor as it came"
                           ) from None


def decode_id_cursor(cursor: str | None) -> int | None:
    """For collections newest first by id: the id of the page's last item."""
    key = decode_cursor(cursor)
    if not key:
        return None
    if not key.isdigit() or len(key) > 18:
        raise InvalidInput(f"invalid cursor {cursor!r}: pass next_cursor as it came")
    return int(key)


def trimmed(rows: Sequence[T], limit: int, key: Callable[[T], object]
            ) -> tuple[list[T], str | None]:
    """A page from ``limit + 1`` rows read: the first ``limit``, and a cursor only when
    the extra row shows there is more."""
    page = list(rows[:limit])
    return page, (encode_cursor(str(key(page[-1]))) if len(rows) > limit else None)


def page_in_memory(items: Sequence[T], key: Callable[[T], str], cursor: str | None,
                   limit: int) -> tuple[list[T], str | None]:
    """A page of a small collection the services return whole (domains, lists, rules),
    sorted by ``key``, so that every collection pages the same way."""
    after = decode_cursor(cursor)
    ordered = sorted(items, key=key)
    start = next((i for i, item in enumerate(ordered) if key(item) > after),
                 len(ordered)) if after else 0
    chunk = ordered[start:start + limit]
    more = start + limit < len(ordered)
    return chunk, (encode_cursor(key(chunk[-1])) if more and chunk else None)
