"""tasks.py: the one backoff and the one periodic loop."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from hasync.tasks import Backoff, periodic, wait_or_stop

log = logging.getLogger("hasync.test_tasks")


# -- Backoff -------------------------------------------------------------------------------------------------


def test_backoff_doubles_up_to_its_cap() -> None:
    b = Backoff(1.0, 10.0)
    assert [b.next() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert b.current_s == 10.0


def test_backoff_reset_starts_again_at_initial() -> None:
    b = Backoff(0.5, 60.0)
    b.next(), b.next(), b.next()
    assert b.current_s == 4.0
    b.reset()
    assert b.current_s == 0.5
    assert b.next() == 0.5


def test_backoff_after_counts_failures_from_one() -> None:
    b = Backoff(2.0, 300.0)
    assert [b.after(n) for n in (0, 1, 2, 3, 8, 9, 50)] == [2.0, 2.0, 4.0, 8.0, 256.0, 300.0, 300.0]
    assert b.current_s == 2.0  # `after` keeps no state


def test_backoff_jitter_stays_within_its_bounds_and_spreads() -> None:
    random.seed(45641)
    b = Backoff(10.0, 10.0, jitter=0.1)
    delays = [b.next() for _ in range(2000)]
    assert all(9.0 <= d <= 11.0 for d in delays)
    assert min(delays) < 9.2 and max(delays) > 10.8  # spread over the whole band, not a constant
    afters = [b.after(1) for _ in range(2000)]
    assert all(9.0 <= d <= 11.0 for d in afters) and len(set(afters)) > 1000


def test_backoff_without_jitter_is_exact() -> None:
    assert {Backoff(3.0, 3.0).next() for _ in range(100)} == {3.0}


@pytest.mark.parametrize(("initial", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_backoff_refuses_bad_bounds(initial: float, cap: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial, cap)


# -- wait_or_stop ---------------------------------------------------------------------------------------------


def test_wait_or_stop_tells_stop_from_timeout() -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        assert await wait_or_stop(stop, 0.001) is False
        asyncio.get_running_loop().call_soon(stop.set)
        assert await asyncio.wait_for(wait_or_stop(stop, 3600), 5) is True
        assert await wait_or_stop(stop, 3600) is True  # already set: at once

    asyncio.run(scenario())


# -- periodic -------------------------------------------------------------------------------------------------


class Work:
    """A periodic task's work: counts its runs, raises on those in `fail_on`, sets `stop` at run `stop_at`."""

    def __init__(self, stop: asyncio.Event, stop_at: int, fail_on: tuple[int, ...] = ()) -> None:
        self.stop = stop
        self.stop_at = stop_at
        self.fail_on = fail_on
        self.runs = 0

    async def __call__(self) -> None:
        self.runs += 1
        if self.runs in self.fail_on:
            raise RuntimeError(f"boom {self.runs}")
        if self.runs == self.stop_at:
            self.stop.set()


def test_periodic_runs_until_stopped() -> None:
    async def scenario() -> int:
        work = Work(asyncio.Event(), stop_at=5)
        await asyncio.wait_for(periodic(work, 0.001, work.stop, log, "work"), 5)
        return work.runs

    assert asyncio.run(scenario()) == 5


def test_periodic_waits_before_the_first_run_unless_first_now() -> None:
    async def scenario(first_now: bool) -> int:
        work = Work(asyncio.Event(), stop_at=1)
        task = asyncio.create_task(periodic(work, 3600, work.stop, log, "work", first_now=first_now))
        for _ in range(100):  # let the loop run: a run due now happens within a few steps
            await asyncio.sleep(0)
        work.stop.set()
        await asyncio.wait_for(task, 5)
        return work.runs

    assert asyncio.run(scenario(first_now=True)) == 1
    assert asyncio.run(scenario(first_now=False)) == 0


def test_periodic_survives_a_failing_run_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> int:
        work = Work(asyncio.Event(), stop_at=3, fail_on=(1,))
        await asyncio.wait_for(periodic(work, 0.001, work.stop, log, "the frobnicator"), 5)
        return work.runs

    with caplog.at_level(logging.ERROR, logger="hasync.test_tasks"):
        assert asyncio.run(scenario()) == 3
    [record] = caplog.records
    assert record.getMessage() == "the frobnicator failed"
    assert record.exc_info is not None and "boom 1" in str(record.exc_info[1])


def test_periodic_stops_promptly_during_a_long_wait() -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        started = asyncio.Event()

        async def work() -> None:
            started.set()

        task = asyncio.create_task(periodic(work, 3600, stop, log, "work", first_now=True))
        await asyncio.wait_for(started.wait(), 5)
        stop.set()
        await asyncio.wait_for(task, 5)  # an hour's wait ends with the stop, not after it

    asyncio.run(scenario())


def test_periodic_asks_a_callable_interval_before_each_wait() -> None:
    async def scenario() -> list[int]:
        work = Work(asyncio.Event(), stop_at=3)
        asked: list[int] = []

        def interval() -> float:
            asked.append(work.runs)
            return 0.001

        await asyncio.wait_for(periodic(work, interval, work.stop, log, "work"), 5)
        return asked

    assert asyncio.run(scenario()) == [0, 1, 2, 3]


def test_periodic_lets_cancellation_through() -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        inside = asyncio.Event()

        async def work() -> None:
            inside.set()
            await asyncio.Event().wait()  # never ends: only a cancel gets it out

        task = asyncio.create_task(periodic(work, 0.001, stop, log, "work", first_now=True))
        await asyncio.wait_for(inside.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
