"""Queue ids: short, unique across processes, and sortable by time of arrival."""

from __future__ import annotations

import os
import random

# Queue ids need to be unique, not unguessable: a seeded generator spares every ingest
# a getrandom(2) system call (secrets), which showed in profiles of the ingest path.
_random = random.Random(os.urandom(16))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(16)))


def new_message_id(now: float) -> str:
    return f"{int(now * 1000):011x}{_random.getrandbits(40):010x}"
