"""Our loop marker: the field each copy carries, and its value per instance and list.

Shared by the send chain (which adds it) and the accept chain (which refuses a message
that already carries ours for the same list).
"""

from __future__ import annotations

LOOP_HEADER = "X-MailFlow-Loop"


def loop_marker(instance_id: str, list_address: str) -> str:
    """The marker value this instance adds to every copy it sends for a list."""
    return f"{instance_id}; {list_address}"
