"""A provider's send rate kept by every relay of a PostgreSQL store together.

What the Amazon SES egress paces its calls with when several workers send for one
account (``egress/token_bucket.SendPace``): each reservation is one short write to the
route's row of ``send_pace`` (``store/send_pace.py``), so the workers' sum stays within
the rate whatever their number.  A store that does not answer refuses the send (it is
deferred and retried), rather than sending unpaced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from mailflow.store.runner import StoreRunner
from mailflow.store.send_pace import reserve_send

log = logging.getLogger(__name__)


class SharedPace:
    def __init__(self, runner: StoreRunner, route: str, rate: float, max_wait: float) -> None:
        self._runner = runner
        self.route = route
        self.max_wait = max_wait
        self.rate = rate
        self.burst = max(rate, 1.0)

    def set_rate(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(rate, 1.0)

    async def _reserve(self, count: float) -> float | None:
        try:
            return await self._runner.write(reserve_send, self._runner.engines, self.route,
                                            count, self.rate, self.burst, self.max_wait,
                                            time.time())
        except Exception as exc:  # the send is deferred, never sent unpaced
            log.warning("send pace of %s not reserved: %s", self.route,
                        str(exc).split("\n")[0], extra={"action": "pace_error"})
            return None

    async def take(self, count: float) -> bool:
        """Wait until ``count`` sends fit the shared rate; False (nothing sent) when the
        wait would be beyond ``max_wait`` or the store did not answer."""
        wait = await self._reserve(count)
        if wait is None:
            return False
        if wait > 0:
            await asyncio.sleep(wait)
        return True

    async def throttled(self) -> None:
        """The provider said "too fast": every relay's senders wait about a second more."""
        await self._reserve(self.rate)


def shared_pace(runner: StoreRunner) -> Callable[[str, float, float], SharedPace]:
    """The factory the SES egress builds its pace with (``SesOptions.pace``)."""
    return lambda route, rate, max_wait: SharedPace(runner, route, rate, max_wait)
