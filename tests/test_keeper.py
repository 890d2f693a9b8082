"""keeper.py: AlarmKeeper raises and clears alarm 45641 from check verdicts, on a SQLite store in a tmp
dir, for the standby (which owns the alarm) and the active (which takes over when the standby is gone).
No processes: the peer, when one is needed, is an AgentClient over the in-memory transport."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hasync.alarms.model import Alarm, Identity
from hasync.alarms.sqlite_store import SqliteStore
from hasync.check import OutOfSync, Verdict
from hasync.config import Config, load
from hasync.demo import write_pair
from hasync.errors import Cause
from hasync.keeper import AlarmDuty, AlarmKeeper
from hasync.peer.client import AgentClient
from hasync.peer.transport import MemoryRequest, MemoryResponse, MemoryTransport

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
STANDBY = AlarmDuty("standby", owner=True)
ACTIVE = AlarmDuty("active", owner=False)


@pytest.fixture
def cfgs(tmp_path: Path) -> tuple[Config, Config]:
    pair = write_pair(tmp_path, 1, 2)
    return load(pair.config_a), load(pair.config_b)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "alarms.db")
    yield s
    s.close()


def tuned(cfg: Config, **check: int) -> Config:
    return cfg.model_copy(update={"check": cfg.check.model_copy(update=check)})


class Verdicts:
    """Verdicts one minute apart."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, in_sync: bool, cause: Cause | None = None, reachable: bool = True, path: str = "f") -> Verdict:
        self.n += 1
        oos = () if in_sync else (OutOfSync("data", path, "differs", cause),)
        return Verdict(in_sync, cause, reachable, None, oos, checked_at=T0 + timedelta(minutes=self.n))


def run(coro: Any) -> Any:
    async def main() -> Any:
        return await coro

    return asyncio.run(main())


def events(store: SqliteStore) -> list[tuple[str, str]]:
    return [(item.event, item.notifier) for item in store.pending()]


def test_the_standby_raises_after_raise_after_verdicts_and_clears_after_clear_after(
    cfgs: tuple[Config, Config], store: SqliteStore
) -> None:
    cfg = tuned(cfgs[1], raise_after=2, clear_after=2)
    k = AlarmKeeper(cfg, STANDBY, store, None, ["hook"], None, shared=False)
    v = Verdicts()

    async def scenario() -> list[Alarm | None]:
        got = [await k.on_verdict(v(False, Cause.SYNC_ERROR))]
        assert store.active() == []  # one verdict is not enough
        got.append(await k.on_verdict(v(False, Cause.SYNC_ERROR)))
        got.append(await k.on_verdict(v(True)))
        got.append(await k.on_verdict(v(True)))
        return got

    first, raised, still, cleared = run(scenario())
    assert first is None and cleared is None
    assert raised is not None and still is not None and still.fingerprint == raised.fingerprint
    assert (raised.cause, raised.host_name) == ("sync_error", "node-b")
    assert raised.identity == Identity("demo-cluster", "Flink", "FlinkServer", "node-b")
    (alarm,) = store.history()
    assert alarm.cleared_at == T0 + timedelta(minutes=4) and store.active() == []
    assert events(store) == [("raise", "hook"), ("clear", "hook")]


def test_a_raised_alarm_follows_the_cause_without_a_new_notification(
    cfgs: tuple[Config, Config], store: SqliteStore
) -> None:
    k = AlarmKeeper(cfgs[1], STANDBY, store, None, ["hook"], None, shared=False)
    v = Verdicts()

    async def scenario() -> tuple[Alarm, Alarm, Alarm]:
        a = await k.on_verdict(v(False, Cause.DISK_FULL, path="big"))
        b = await k.on_verdict(v(False, Cause.PERMISSION_DENIED, path="locked"))
        c = await k.on_verdict(v(False, Cause.UNKNOWN, path="other"))  # no cause of its own: keeps the fault's
        assert a is not None and b is not None and c is not None
        return a, b, c

    a, b, c = run(scenario())
    assert a.cause == "disk_full" and b.cause == "permission_denied" and c.cause == "permission_denied"
    assert "locked" in b.additional_info and "other" not in c.additional_info
    assert len(store.history()) == 1 and events(store) == [("raise", "hook")]


def test_on_raise_is_told_of_a_new_alarm_once(cfgs: tuple[Config, Config], store: SqliteStore) -> None:
    k = AlarmKeeper(cfgs[1], STANDBY, store, None, [], None, shared=False)
    v = Verdicts()
    told: list[str] = []

    async def scenario() -> None:
        done = asyncio.Event()

        async def on_raise(alarm: Alarm) -> None:
            told.append(alarm.cause)
            done.set()

        k.on_raise = on_raise
        await k.on_verdict(v(False, Cause.SYNC_ERROR))
        await asyncio.wait_for(done.wait(), 5)
        await k.on_verdict(v(False, Cause.SYNC_ERROR))
        await asyncio.sleep(0)  # a second notification would have been scheduled by now

    run(scenario())
    assert told == ["sync_error"]


def test_the_active_raises_only_when_the_standby_stays_unreachable(
    cfgs: tuple[Config, Config], store: SqliteStore
) -> None:
    cfg = tuned(cfgs[0], raise_after=1, takeover_after=3)
    k = AlarmKeeper(cfg, ACTIVE, store, None, ["hook"], None, shared=False)
    v = Verdicts()

    async def scenario() -> list[Alarm | None]:
        got = [await k.on_verdict(v(False, Cause.SYNC_ERROR))]  # the standby's own fault: its alarm
        got.append(await k.on_verdict(v(True)))
        got += [await k.on_verdict(v(False, Cause.PEER_UNREACHABLE, reachable=False)) for _ in range(3)]
        got.append(await k.on_verdict(v(True)))
        return got

    file_fault, ok, u1, u2, taken, back = run(scenario())
    assert file_fault is None and ok is None and u1 is None and u2 is None and back is None
    assert taken is not None and taken.cause == "peer_unreachable"
    # The active names the standby's host: its peer.hostname, else the hostname it learned, else the peer's name.
    assert taken.host_name == "node-b"
    assert [a.cleared_at is not None for a in store.history()] == [True]
    assert events(store) == [("raise", "hook"), ("clear", "hook")]


def test_the_takeover_counts_only_unreachable_verdicts_in_a_row(
    cfgs: tuple[Config, Config], store: SqliteStore
) -> None:
    """Out-of-sync verdicts while the standby answered do not count toward the active's takeover."""
    k = AlarmKeeper(tuned(cfgs[0], raise_after=1, takeover_after=3), ACTIVE, store, None, [], None, shared=False)
    v = Verdicts()

    async def scenario() -> list[Alarm | None]:
        got = [await k.on_verdict(v(False, Cause.SYNC_ERROR)) for _ in range(2)]  # reachable, out of sync
        got += [await k.on_verdict(v(False, Cause.PEER_AGENT_DOWN, reachable=False)) for _ in range(3)]
        return got

    *before, taken = run(scenario())
    assert before == [None, None, None, None]  # not after the first unreachable verdict: after the third
    assert taken is not None and taken.cause == "peer_agent_down"


def peer_with_alarms(docs: list[dict[str, Any]]) -> AgentClient:
    async def handler(req: MemoryRequest) -> MemoryResponse:
        assert req.path == "/v1/alarms"
        return MemoryResponse(200, json.dumps(docs).encode())

    return AgentClient("http://node-a:1", "t", 1.0, "node-a", transport=MemoryTransport(handler))


def test_the_standby_leaves_an_alarm_the_active_raised_to_the_active(
    cfgs: tuple[Config, Config], store: SqliteStore
) -> None:
    theirs = {
        "source": "demo-cluster",
        "service_name": "Flink",
        "role_name": "FlinkServer",
        "host_name": "node-b",
        "cleared_at": None,
    }
    v = Verdicts()
    k = AlarmKeeper(cfgs[1], STANDBY, store, None, [], peer_with_alarms([theirs]), shared=False)
    assert run(k.on_verdict(v(False, Cause.SYNC_ERROR))) is None and store.active() == []
    # Another pair's alarm, or one already cleared, is not the active's alarm of this pair.
    for other in ({**theirs, "role_name": "OtherRole"}, {**theirs, "cleared_at": "2026-01-01T00:00:00+00:00"}):
        k = AlarmKeeper(cfgs[1], STANDBY, store, None, [], peer_with_alarms([other]), shared=False)
        assert run(k.on_verdict(v(False, Cause.SYNC_ERROR))) is not None
        run(k.on_verdict(v(True)))


def test_an_unreachable_peer_does_not_stop_the_standby_from_raising(
    cfgs: tuple[Config, Config], store: SqliteStore
) -> None:
    async def handler(req: MemoryRequest) -> MemoryResponse:
        raise ConnectionRefusedError(111, "Connection refused")

    peer = AgentClient("http://node-a:1", "t", 1.0, "node-a", transport=MemoryTransport(handler))
    k = AlarmKeeper(cfgs[1], STANDBY, store, None, [], peer, shared=False)
    assert run(k.on_verdict(Verdicts()(False, Cause.SYNC_ERROR))) is not None


def test_a_shared_store_keeps_only_this_pairs_alarms(cfgs: tuple[Config, Config], store: SqliteStore) -> None:
    other = Identity("other-cluster", "Flink", "FlinkServer", "node-x")
    store.raise_alarm(other, Cause.SYNC_ERROR, "theirs", T0)
    k = AlarmKeeper(cfgs[1], STANDBY, store, None, [], None, shared=True)
    v = Verdicts()
    assert run(k.mine()) == []
    raised = run(k.on_verdict(v(False, Cause.SYNC_ERROR)))
    assert [a.fingerprint for a in run(k.mine())] == [raised.fingerprint]
    run(k.on_verdict(v(True)))
    assert [a.identity for a in store.active()] == [other]  # the other pair's alarm is left alone
