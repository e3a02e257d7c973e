"""Loop prevention: our own marker header per list, and a cap on Received hops."""

from __future__ import annotations

from mailflow import headers
from mailflow.errors import LoopDetected

LOOP_HEADER = "X-MailFlow-Loop"


def loop_marker(instance_id: str, list_address: str) -> str:
    """The marker value this instance adds to every copy it sends for a list."""
    return f"{instance_id}; {list_address}"


def check_hops(header: bytes, max_received: int) -> None:
    hops = headers.count_fields(header, "Received")
    if hops > max_received:
        raise LoopDetected(f"too many hops ({hops} Received headers, at most {max_received})")


def check_not_looping(header: bytes, instance_id: str, list_addresses: list[str]) -> None:
    """Refuse a message that already went through this instance for one of the lists."""
    if not list_addresses or LOOP_HEADER.lower().encode() not in header.lower():
        return
    seen = set(headers.field_values(header, LOOP_HEADER))
    for address in list_addresses:
        if loop_marker(instance_id, address) in seen:
            raise LoopDetected(f"mail loop: this message already went through {address}")
