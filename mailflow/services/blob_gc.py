"""``mailflow gc``: what the relay's maintenance task collects, plus what it cannot see.

The maintenance task collects bodies the database released.  A body whose commit never
happened (the relay crashed, or the disk filled, between writing the body and committing
the message; the client was told to retry, so nothing is lost) has no row at all, and a
write interrupted midway leaves a temporary file: nothing refers to either, and nothing
removed them.  This sweep lists the store and removes bodies without a row, and
temporary files, older than a day: an ingest writes its body well within that time
before it commits (a reused body is made fresh again), so a body being committed is
never swept.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from mailflow.blobs import Blobs
from mailflow.store.repository import Repository

ORPHAN_AGE = 86_400.0
BATCH = 1000
MAX_BATCHES = 100_000  # a bound on the loops, far above any real store


@dataclass(frozen=True, slots=True)
class Collected:
    finished: int       # messages whose deliveries were all final, marked done
    released: int       # bodies deleted after ``blob_retention``
    purged: int         # messages (and events) forgotten after ``message_retention``
    orphans: int        # bodies that no row knows
    orphan_bytes: int
    leftovers: int      # temporary files of interrupted writes


def collect_garbage(repo: Repository, blobs: Blobs, now: float, *, blob_retention: float,
                    message_retention: float, orphan_age: float = ORPHAN_AGE) -> Collected:
    """Blocking (store and blob calls): for the CLI, or a thread."""
    finished = _repeat(lambda: repo.finish_messages(now))
    released = _repeat(lambda: repo.collect_blobs(now - blob_retention, blobs.unlink_many))
    purged = _repeat(lambda: repo.purge_messages(now - message_retention))
    orphans = orphan_bytes = 0
    stored = blobs.stored_before(now - orphan_age)
    for _ in range(MAX_BATCHES):
        batch = dict(itertools.islice(stored, BATCH))
        if not batch:
            break
        unknown = set(batch) - repo.known_blobs(list(batch))
        if unknown:
            blobs.unlink_many(sorted(unknown))
            orphans += len(unknown)
            orphan_bytes += sum(batch[d] for d in unknown)
    leftovers = len(blobs.leftovers_before(now - orphan_age))
    return Collected(finished, released, purged, orphans, orphan_bytes, leftovers)


def _repeat(step: Callable[[], int]) -> int:
    total = 0
    for _ in range(MAX_BATCHES):
        done = step()
        if not done:
            break
        total += done
    return total
