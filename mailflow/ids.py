"""Queue ids: short, unique across processes, and sortable by time of arrival."""

from __future__ import annotations

import secrets


def new_message_id(now: float) -> str:
    return f"{int(now * 1000):011x}{secrets.token_hex(5)}"
