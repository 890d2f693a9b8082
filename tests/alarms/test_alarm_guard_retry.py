"""GuardedStore.run: the waits between its retries of a store that is down (the one `tasks.Backoff`).

The waits are read from a stand-in for `tasks.wait_or_stop`, so the test never waits for real."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hasync import tasks
from hasync.alarms.guard import GuardedStore
from hasync.alarms.sqlite_store import SqliteStore
from hasync.alarms.store import AlarmStore, StoreUnavailable


class Opener:
    """Fails `failures` times, then opens a real SQLite store."""

    def __init__(self, path: Path, failures: int) -> None:
        self.path = path
        self.failures = failures
        self.calls = 0
        self.opened: list[SqliteStore] = []

    def __call__(self) -> AlarmStore:
        self.calls += 1
        if self.calls <= self.failures:
            raise StoreUnavailable(f"alarm store {self.path}: cannot open: down ({self.calls})")
        store = SqliteStore(self.path)
        self.opened.append(store)
        return store


def run_recording_waits(
    monkeypatch: pytest.MonkeyPatch, guard: GuardedStore, waits: int
) -> tuple[list[float], list[int]]:
    """Run `guard.run` until it has asked for `waits` waits; return them, and at which wait it recovered."""
    asked: list[float] = []
    recovered: list[int] = []

    async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
        asked.append(seconds)
        return len(asked) > waits

    monkeypatch.setattr(tasks, "wait_or_stop", wait_or_stop)

    async def scenario() -> None:
        await asyncio.wait_for(guard.run(asyncio.Event(), on_recover=lambda: recovered.append(len(asked))), 30)

    asyncio.run(scenario())
    return asked[:waits], recovered


def test_never_opened_store_is_tried_at_once_then_with_doubling_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opener = Opener(tmp_path / "alarms.db", failures=4)
    guard = GuardedStore(opener, "sqlite:test", retry_initial_s=1.0, retry_max_s=5.0)
    waits, recovered = run_recording_waits(monkeypatch, guard, 6)
    # At once, then after each failure a doubled wait (capped); once back, the health check every second.
    assert waits == [2.0, 4.0, 5.0, 5.0, 1.0, 1.0]
    assert opener.calls == 5
    assert recovered == [4]  # the fifth try, after the fourth wait
    assert guard.ok
    guard.close()


def test_store_that_failed_at_open_waits_the_initial_backoff_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opener = Opener(tmp_path / "alarms.db", failures=2)
    guard = GuardedStore(opener, "sqlite:test", retry_initial_s=0.5, retry_max_s=30.0)
    assert not guard.open()  # the agent's own first try (`open_alarms` without the dispatcher)
    waits, recovered = run_recording_waits(monkeypatch, guard, 4)
    assert waits == [0.5, 1.0, 1.0, 1.0]
    assert opener.calls == 3
    assert recovered == [2]
    guard.close()


def test_a_store_lost_again_starts_from_the_initial_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opener = Opener(tmp_path / "alarms.db", failures=1)
    guard = GuardedStore(opener, "sqlite:test", retry_initial_s=0.25, retry_max_s=30.0)
    asked: list[float] = []

    async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
        asked.append(seconds)
        if len(asked) == 3:  # up and checked once: now it fails under a call
            assert guard.ok
            guard._fault(StoreUnavailable("alarm store test: cannot read alarms: gone"))
            opener.failures = opener.calls + 3  # and its next three reopenings fail
            guard._close_inner()
        return len(asked) > 7

    monkeypatch.setattr(tasks, "wait_or_stop", wait_or_stop)
    asyncio.run(asyncio.wait_for(guard.run(asyncio.Event()), 30))
    # Never opened: at once, fails: 0.5. Back: 1.0 (the health check), lost during the next 1.0, retried
    # after it: fails, 0.5 (from the start again, not from where the first outage left it), 1.0, 2.0; back: 1.0.
    assert asked[:7] == [0.5, 1.0, 1.0, 0.5, 1.0, 2.0, 1.0]
    guard.close()
