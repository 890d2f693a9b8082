"""The alarm store contract, run against SQLite and PostgreSQL, plus what is particular to each backend."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest

from hasync.alarms.backends import open_store
from hasync.alarms.model import Alarm, Identity
from hasync.alarms.store import MIGRATIONS, SCHEMA_VERSION, AlarmStore, StoreError
from hasync.errors import Cause, HasyncError

from .conftest import Stores
from .pgfixtures import url_with
from .receivers import free_port

IDENT = Identity("cluster-1", "Flink", "FlinkServer", "node-b")
OTHER = Identity("cluster-1", "Flink", "FlinkServer", "node-d")
FP = IDENT.fingerprint
T = TypeVar("T")
T0 = datetime(2026, 11, 25, 9, 0, 0, 250000, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def race(n: int, fn: Callable[[int], T]) -> list[T]:
    """Run `fn(i)` in `n` threads released at the same instant."""
    barrier = threading.Barrier(n)

    def go(i: int) -> T:
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(go, range(n)))


# -- raise ---------------------------------------------------------------


def test_raise_is_idempotent(store: AlarmStore) -> None:
    first, created = store.raise_alarm(IDENT, Cause.PEER_AGENT_DOWN, "cause=peer_agent_down", at(0))
    assert created
    assert first.id > 0 and first.fingerprint == FP and first.active
    assert (first.source, first.service_name, first.role_name, first.host_name) == (
        "cluster-1",
        "Flink",
        "FlinkServer",
        "node-b",
    )
    assert first.raised_at == at(0) and first.raised_at.tzinfo is not None

    again, created = store.raise_alarm(IDENT, Cause.PEER_AGENT_DOWN, "cause=peer_agent_down", at(60))
    assert not created
    assert again == first
    assert store.active() == [first]
    assert len(store.history()) == 1


def test_raise_of_an_active_alarm_updates_cause_and_info(store: AlarmStore) -> None:
    first, _ = store.raise_alarm(IDENT, Cause.PEER_AGENT_DOWN, "cause=peer_agent_down", at(0))
    updated, created = store.raise_alarm(IDENT, Cause.JUNK_FILE, "cause=junk_file conf/sedXyZ12", at(60))
    assert not created
    assert (updated.id, updated.raised_at) == (first.id, first.raised_at)
    assert (updated.cause, updated.additional_info) == ("junk_file", "cause=junk_file conf/sedXyZ12")
    assert store.get(FP) == updated


def test_identities_are_separate(store: AlarmStore) -> None:
    a, _ = store.raise_alarm(IDENT, Cause.DISK_FULL, "x", at(0))
    b, created = store.raise_alarm(OTHER, Cause.DISK_FULL, "x", at(1))
    assert created and a.id != b.id
    assert [x.fingerprint for x in store.active()] == [FP, OTHER.fingerprint]
    assert store.active(OTHER.fingerprint) == [b]


def test_one_active_alarm_per_identity_is_enforced_by_the_database(stores: Stores) -> None:
    store = stores.open()
    store.raise_alarm(IDENT, Cause.DISK_FULL, "x", at(0))
    duplicate = (
        "INSERT INTO alarms (fingerprint, alarm_id, source, service_name, role_name, host_name, cause,"
        " additional_info, raised_at, updated_at) SELECT fingerprint, alarm_id, source, service_name, role_name,"
        " host_name, cause, additional_info, raised_at, updated_at FROM alarms"
    )
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.UniqueViolation)):
        stores.sql(duplicate)


def test_racing_raisers_on_two_connections_get_one_alarm(stores: Stores) -> None:
    agents = [stores.open(), stores.open()]
    for round_ in range(4):
        t = at(round_ * 100)

        def raiser(i: int, t: datetime = t) -> tuple[Alarm, bool]:
            return agents[i % 2].raise_alarm(IDENT, Cause.PEER_AGENT_DOWN, f"from {i}", t, notify=["webhook:x"])

        def clearer(i: int, t: datetime = t + timedelta(seconds=50)) -> Alarm | None:
            return agents[i % 2].clear(FP, t, notify=["webhook:x"])

        results = race(8, raiser)
        created = [r for r in results if r[1]]
        assert len(created) == 1, results
        assert len({r[0].id for r in results}) == 1
        assert len(agents[0].active()) == 1
        assert len([i for i in agents[1].pending() if i.event == "raise"]) == round_ + 1
        # and exactly one of many racing clearers wins
        cleared = race(8, clearer)
        assert len([c for c in cleared if c is not None]) == 1
        assert agents[1].active() == []
        assert len([i for i in agents[0].pending() if i.event == "clear"]) == round_ + 1
    assert len(agents[0].history()) == 4


# -- clear and history ---------------------------------------------------


def test_clear_keeps_both_times_in_the_history(store: AlarmStore) -> None:
    raised, _ = store.raise_alarm(IDENT, Cause.PEER_AGENT_DOWN, "info", at(0))
    assert store.clear(OTHER.fingerprint, at(10)) is None
    cleared = store.clear(FP, at(120))
    assert cleared is not None
    assert cleared.id == raised.id and cleared.cleared_at == at(120) and cleared.raised_at == at(0)
    assert store.active() == []
    assert store.clear(FP, at(130)) is None

    again, created = store.raise_alarm(IDENT, Cause.JUNK_FILE, "info2", at(300))
    assert created and again.id != raised.id and again.fingerprint == raised.fingerprint
    history = store.history()
    assert [a.id for a in history] == [again.id, raised.id]
    assert history[1].to_json()["raised_at"] == "2026-11-25T09:00:00.250+00:00"
    assert history[1].to_json()["cleared_at"] == "2026-11-25T09:02:00.250+00:00"
    assert history[0].to_json()["cleared_at"] is None
    assert store.get(FP) == again  # the active one first
    store.clear(FP, at(400))
    latest = store.get(FP)
    assert latest is not None and latest.id == again.id and latest.cleared_at == at(400)
    assert store.history(limit=1) == [latest]


def test_clear_is_never_before_the_raise(store: AlarmStore) -> None:
    # Two agents sharing a store may disagree on the time by a little.
    store.raise_alarm(IDENT, Cause.PEER_AGENT_DOWN, "info", at(0))
    cleared = store.clear(FP, at(-5))
    assert cleared is not None and cleared.cleared_at == at(0)


def test_get_by_id_and_fingerprint(store: AlarmStore) -> None:
    alarm, _ = store.raise_alarm(IDENT, Cause.DISK_FULL, "x", at(0))
    assert store.get(alarm.id) == alarm
    assert store.get(FP) == alarm
    assert store.get(alarm.id + 1000) is None
    assert store.get("0000000000000000") is None


def test_naive_times_are_refused(store: AlarmStore) -> None:
    with pytest.raises(ValueError, match="naive"):
        store.raise_alarm(IDENT, Cause.DISK_FULL, "x", datetime(2026, 11, 25, 9, 0))


def test_alarms_survive_a_restart(stores: Stores) -> None:
    first = stores.open()
    raised, _ = first.raise_alarm(IDENT, Cause.PEER_AGENT_DOWN, "info", at(0))
    first.close()
    second = stores.open()
    assert second.active() == [raised]
    # no duplicate after the restart
    again, created = second.raise_alarm(IDENT, Cause.PEER_AGENT_DOWN, "info", at(60))
    assert not created and again.id == raised.id
    assert second.clear(FP, at(120)) is not None
    second.close()
    third = stores.open()
    assert third.active() == []
    assert [(a.raised_at, a.cleared_at) for a in third.history()] == [(at(0), at(120))]


def test_diagnosis_is_stored_with_the_alarm(stores: Stores) -> None:
    store = stores.open()
    alarm, _ = store.raise_alarm(IDENT, Cause.JUNK_FILE, "x", at(0))
    diagnosis = {
        "cause": "junk_file",
        "steps": [{"id": "network", "verdict": "ok", "evidence": "ping ok"}],
        "fixed": ["conf/sedXyZ12"],
        "cleared": True,
    }
    store.set_diagnosis(alarm.id, diagnosis)
    got = store.get(alarm.id)
    assert got is not None and got.diagnosis == diagnosis
    assert got.to_json(diagnosis=True)["diagnosis"] == diagnosis
    assert "diagnosis" not in got.to_json()
    store.close()
    reopened = stores.open()
    assert reopened.history()[0].diagnosis == diagnosis
    with pytest.raises(StoreError, match="no alarm"):
        reopened.set_diagnosis(alarm.id + 1000, {})


def test_closed_store_raises_store_error(stores: Stores) -> None:
    store = stores.open()
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.active()


# -- outbox --------------------------------------------------------------


def test_raise_and_clear_enqueue_in_their_transaction(store: AlarmStore) -> None:
    alarm, _ = store.raise_alarm(IDENT, Cause.DISK_FULL, "x", at(0), notify=["webhook:a", "syslog:b", "webhook:a"])
    items = store.pending()
    assert [(i.event, i.notifier) for i in items] == [("raise", "webhook:a"), ("raise", "syslog:b")]
    assert all(i.payload == alarm.to_json() and i.alarm_row == alarm.id and i.attempts == 0 for i in items)
    # an idempotent raise notifies nobody
    store.raise_alarm(IDENT, Cause.DISK_FULL, "changed", at(10), notify=["webhook:a"])
    assert len(store.pending()) == 2
    cleared = store.clear(FP, at(60), notify=["webhook:a"])
    assert cleared is not None
    last = store.pending()[-1]
    assert (last.event, last.notifier, last.payload) == ("clear", "webhook:a", cleared.to_json())
    assert last.payload["cleared_at"] == "2026-11-25T09:01:00.250+00:00"
    assert store.clear(FP, at(70), notify=["webhook:a"]) is None
    assert len(store.pending()) == 3


def test_outbox_survives_a_restart_and_keeps_order_per_alarm(stores: Stores) -> None:
    store = stores.open()
    alarm, _ = store.raise_alarm(IDENT, Cause.DISK_FULL, "x", at(0), notify=["w"])
    store.clear(FP, at(1), notify=["w"])
    other, _ = store.raise_alarm(OTHER, Cause.DISK_FULL, "x", at(2), notify=["w"])
    store.close()

    store = stores.open()
    now = at(10)
    heads = store.due(now)
    # only the oldest pending item of each (alarm, notifier): the clear waits for its raise
    assert [(i.alarm_row, i.event) for i in heads] == [(alarm.id, "raise"), (other.id, "raise")]
    assert all(i.attempts == 1 for i in heads)
    store.mark_sent(heads[0].id, now)
    nxt = store.due(now)
    assert [(i.alarm_row, i.event) for i in nxt] == [(alarm.id, "clear")]
    store.mark_sent(nxt[0].id, now)
    assert store.due(now) == []  # the other raise is leased
    assert [(i.alarm_row, i.event) for i in store.pending()] == [(other.id, "raise")]


def test_due_leases_items_and_mark_failed_reschedules(stores: Stores) -> None:
    a, b = stores.open(), stores.open()
    a.raise_alarm(IDENT, Cause.DISK_FULL, "x", at(0), notify=["w"])
    now = at(5)
    got = a.due(now, lease_s=30)
    assert len(got) == 1
    assert b.due(now, lease_s=30) == []  # another dispatcher leaves a claimed item alone
    again = b.due(now + timedelta(seconds=31), lease_s=30)  # the lease ran out: the claimer died
    assert [i.id for i in again] == [got[0].id] and again[0].attempts == 2
    b.mark_failed(again[0].id, now + timedelta(seconds=100), "webhook:x: HTTP 503: down")
    assert a.due(now + timedelta(seconds=99)) == []
    retry = a.due(now + timedelta(seconds=100))
    assert retry[0].last_error == "webhook:x: HTTP 503: down" and retry[0].attempts == 3
    a.mark_sent(retry[0].id, now + timedelta(seconds=100))
    assert a.pending() == []
    b.mark_failed(retry[0].id, now, "late failure of a sent item is ignored")
    assert b.pending() == []


def test_due_takes_only_the_given_notifiers(store: AlarmStore) -> None:
    store.raise_alarm(IDENT, Cause.DISK_FULL, "x", at(0), notify=["a", "b", "c"])
    assert [i.notifier for i in store.due(at(1), notifiers=["b", "c"])] == ["b", "c"]
    assert store.due(at(1), notifiers=[]) == []
    assert [i.notifier for i in store.due(at(1))] == ["a"]
    assert store.due(at(1), limit=5) == []


def test_enqueue_outside_a_raise(store: AlarmStore) -> None:
    alarm, _ = store.raise_alarm(IDENT, Cause.DISK_FULL, "x", at(0))
    store.enqueue(alarm.id, "raise", "webhook:late", alarm.to_json())
    (item,) = store.pending()
    assert (item.alarm_row, item.event, item.notifier, item.payload) == (
        alarm.id,
        "raise",
        "webhook:late",
        alarm.to_json(),
    )
    with pytest.raises(ValueError):
        store.enqueue(alarm.id, "bogus", "webhook:late", {})  # type: ignore[arg-type]


def test_resend_candidates_follow_what_was_sent(store: AlarmStore) -> None:
    alarm, _ = store.raise_alarm(IDENT, Cause.DISK_FULL, "x", at(0), notify=["am"])
    assert store.resend_candidates("am", at(0)) == []  # the raise itself is not sent yet
    (item,) = store.due(at(1))
    store.mark_sent(item.id, at(1))
    assert [a.id for a in store.resend_candidates("am", at(0))] == [alarm.id]
    assert store.resend_candidates("other", at(0)) == []
    store.clear(FP, at(100), notify=["am"])
    assert store.resend_candidates("am", at(0)) == []  # the clear is pending: the outbox sends it
    (item,) = store.due(at(101))
    store.mark_sent(item.id, at(101))
    (resolved,) = store.resend_candidates("am", at(50))
    assert resolved.cleared_at == at(100)
    assert store.resend_candidates("am", at(101)) == []  # resolved longer ago than the retention


def test_prune_removes_sent_items_of_old_cleared_alarms(store: AlarmStore) -> None:
    store.raise_alarm(IDENT, Cause.DISK_FULL, "x", at(0), notify=["w"])
    store.clear(FP, at(10), notify=["w"])
    store.raise_alarm(OTHER, Cause.DISK_FULL, "x", at(0), notify=["w"])
    for _ in range(2):
        for item in store.due(at(20)):
            store.mark_sent(item.id, at(20))
    assert store.prune(at(15)) == 0
    assert store.prune(at(30)) == 2
    assert store.prune(at(30)) == 0
    assert len(store.history()) == 2


# -- schema --------------------------------------------------------------


def test_migrations_are_recorded_and_idempotent(stores: Stores) -> None:
    opened = race(3, lambda i: stores.open())  # agents starting at once on a fresh store
    assert all(s.schema_version() == SCHEMA_VERSION for s in opened)
    for s in opened:
        s.close()
    again = stores.open()
    assert again.schema_version() == SCHEMA_VERSION
    rows = stores.sql("SELECT version FROM schema_version ORDER BY version")
    assert [r[0] for r in rows] == [v for v, _ in MIGRATIONS]


def test_a_newer_schema_is_refused(stores: Stores) -> None:
    stores.open().close()
    stores.sql(
        f"INSERT INTO schema_version (version, description, applied_at) VALUES"
        f" ({SCHEMA_VERSION + 1}, 'from the future', '2030-01-01T00:00:00+00:00')"
    )
    with pytest.raises(StoreError, match="newer than this hasync"):
        stores.open()


# -- SQLite --------------------------------------------------------------


def test_sqlite_file_is_in_the_state_dir_in_wal_mode(tmp_path: Path) -> None:
    store = open_store("sqlite", tmp_path / "state")
    store.raise_alarm(IDENT, Cause.DISK_FULL, "x", at(0))
    conn = sqlite3.connect(tmp_path / "state" / "alarms.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    store.close()


def test_sqlite_errors_are_one_line_store_errors(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file where the state dir should be")
    with pytest.raises(StoreError) as err:
        open_store("sqlite", tmp_path / "state")
    assert "\n" not in err.value.message and "alarms.db" in err.value.message
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "alarms.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open"):
        open_store("sqlite", bad)
    assert issubclass(StoreError, HasyncError) and StoreError.code == "store_error"


def test_unknown_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="unknown store") as err:
        open_store("mysql://root:hunter2@db/alarms", tmp_path)
    assert "hunter2" not in str(err.value)


# -- PostgreSQL ----------------------------------------------------------


def test_pg_password_never_in_error_messages(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    for url in (
        f"postgresql://hasync:Sup3rS3cret%21@127.0.0.1:{port}/alarms",
        f"postgresql://127.0.0.1:{port}/alarms?user=hasync&password=Sup3rS3cret!",
    ):
        with pytest.raises(StoreError) as err:
            open_store(url, tmp_path, connect_timeout_s=2)
        message = str(err.value)
        assert "Sup3rS3cret" not in message
        assert "***" in message and "\n" not in message and "cannot connect" in message
        assert err.value.code == "store_error"


def test_pg_wrong_password_or_database_is_a_masked_store_error(pg_server_url: str, tmp_path: Path) -> None:
    wrong_db = url_with(pg_server_url, dbname="hasync_no_such_db")
    with pytest.raises(StoreError, match="does not exist") as err:
        open_store(wrong_db, tmp_path)
    assert "\n" not in str(err.value)
    parts = pg_server_url.split("@", 1)
    if ":" in parts[0].split("//", 1)[1]:
        user = parts[0].split("//", 1)[1].split(":", 1)[0]
        wrong_pw = f"postgresql://{user}:Wr0ngPassw0rd@{parts[1]}"
        try:
            open_store(wrong_pw, tmp_path).close()
        except StoreError as exc:
            assert "Wr0ngPassw0rd" not in str(exc)
            assert "\n" not in str(exc)
        # (a server with trust authentication accepts any password: nothing to check then)


def test_pg_reconnects_after_the_connection_dropped(pg_schema_url: str, tmp_path: Path) -> None:
    store = open_store(pg_schema_url, tmp_path)
    try:
        store.raise_alarm(IDENT, Cause.DISK_FULL, "x", at(0))
        pid = store._conn.info.backend_pid  # type: ignore[attr-defined]
        with psycopg.connect(pg_schema_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert [a.fingerprint for a in store.active()] == [FP]
        assert store._conn.info.backend_pid != pid  # type: ignore[attr-defined]
    finally:
        store.close()


def test_pg_and_sqlite_give_the_same_alarm(pg_schema_url: str, tmp_path: Path) -> None:
    results: list[Alarm] = []
    for spec in ("sqlite", pg_schema_url):
        store = open_store(spec, tmp_path)
        store.raise_alarm(IDENT, Cause.DISK_FULL, "x", at(0))
        alarm = store.clear(FP, at(60))
        assert alarm is not None
        results.append(alarm)
        store.close()
    assert results[0].to_json() == results[1].to_json()
