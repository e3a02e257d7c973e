"""Reading an HTTP request's body within a bound, for every endpoint that takes one.

The body is read chunk by chunk and given up as soon as it grows past the bound (or a
``Content-Length`` announces more), so no client can make the relay hold more than that
in memory.  Shared by the ingress (``POST /v1/email``, the SNS webhook) and the web
adapters (one-click unsubscribe, member imports).
"""

from __future__ import annotations

from starlette.requests import Request


async def read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it grows past ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
