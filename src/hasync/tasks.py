"""Background work: one backoff and one periodic loop, for every task that retries or repeats."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable


class Backoff:
    """Exponential backoff: `initial_s`, doubling up to `max_s`, with ±`jitter` (a fraction) spread.

    `next()` gives the delay to wait now and doubles the following one; `reset()` after a success."""

    def __init__(self, initial_s: float, max_s: float, jitter: float = 0.0) -> None:
        if not 0 < initial_s <= max_s:
            raise ValueError(f"backoff: need 0 < initial_s ({initial_s}) <= max_s ({max_s})")
        self.initial_s = initial_s
        self.max_s = max_s
        self.jitter = jitter
        self._current = initial_s

    @property
    def current_s(self) -> float:
        """The delay the next `next()` returns (before jitter)."""
        return self._current

    def next(self) -> float:
        delay = self._current
        self._current = min(self.max_s, self._current * 2)
        return self.spread(delay)

    def reset(self) -> None:
        self._current = self.initial_s

    def after(self, attempts: int) -> float:
        """The delay after the `attempts`-th failure (1: `initial_s`), for state kept elsewhere (an outbox row)."""
        return self.spread(min(self.max_s, self.initial_s * 2.0 ** max(0, attempts - 1)))

    def spread(self, delay: float) -> float:
        return delay * (1 + random.uniform(-self.jitter, self.jitter)) if self.jitter else delay


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds` or until `stop` is set; True when it was set."""
    if stop.is_set():
        return True
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def periodic(
    work: Callable[[], Awaitable[object]],
    interval_s: float | Callable[[], float],
    stop: asyncio.Event,
    log: logging.Logger,
    what: str,
    *,
    first_now: bool = False,
) -> None:
    """Run `work()` every `interval_s` (or what the callable says before each wait) until `stop` is set.

    A failing run is logged with its traceback and the loop goes on: a side task never stops the agent.
    `first_now`: run once before the first wait."""
    if first_now:
        await _run(work, log, what)
    while not await wait_or_stop(stop, interval_s() if callable(interval_s) else interval_s):
        await _run(work, log, what)


async def _run(work: Callable[[], Awaitable[object]], log: logging.Logger, what: str) -> None:
    try:
        await work()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s failed", what)
