"""A damaged or unreachable alarm store is a side part's fault: real agents keep replicating (issue 9, items 9, 11).

The agents run as processes on 127.0.0.1; the PostgreSQL store is the session's real server, reached
through a TCP relay in this test that refuses connections until the test lets them through.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import tarfile
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
import pytest

from hasync.alarms.guard import GuardedStore
from hasync.alarms.model import Identity
from hasync.alarms.pg_store import PgStore
from hasync.alarms.sqlite_store import SqliteStore
from hasync.alarms.store import AlarmStore, StoreError, StoreUnavailable
from hasync.errors import Cause
from hasync.masking import mask_url, url_secrets
from pairlib import PairEnv, wait_for
from receivers import free_port_both

INTERVAL = 1.0


def status(env: PairEnv, node: str = "b") -> dict[str, Any]:
    r = env.hasync("status", "--json", node=node)
    assert r.returncode == 0, r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def metric(env: PairEnv, name: str, node: str = "b") -> float:
    agent = env.b if node == "b" else env.a
    req = urllib.request.Request(
        f"http://127.0.0.1:{agent.port}/metrics", headers={"Authorization": f"Bearer {agent.token}"}
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


def healthz(env: PairEnv, node: str = "b") -> int:
    agent = env.b if node == "b" else env.a
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.port}/healthz", timeout=5) as r:
        return int(r.status)


def ha_log(env: PairEnv, node: str = "b") -> str:
    return (env.pair.base / "logs" / f"node-{node}" / "ha.log").read_text()


def alarms_in_store(env: PairEnv) -> list[dict[str, Any]]:
    """What the standby's store holds, read by `hasync alarms` (which opens the store itself)."""
    r = env.hasync("alarms", "--all", "--json")
    assert r.returncode == 0, r.stderr
    return [a for a in json.loads(r.stdout) if a["host_name"] == "node-b"]


def replicates(env: PairEnv, name: str) -> None:
    (env.src / "conf" / name).write_text(f"{name} written while the alarm store is broken\n")
    env.wait_in_sync()


def test_garbage_sqlite_store_is_moved_aside_and_the_agent_goes_on(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair(interval_s=INTERVAL)
    state = env.pair.base / "state" / "node-b"
    state.mkdir(parents=True)
    garbage = b"this is not an SQLite database\n" * 200
    (state / "alarms.db").write_bytes(garbage)
    env.a.start()
    env.b.start()
    replicates(env, "a.yaml")
    (aside,) = state.glob("alarms.db.corrupt-*")
    assert aside.read_bytes() == garbage  # kept for whoever looks into it, never deleted
    log = ha_log(env)
    assert "ERROR [alarms] alarm store damaged, moved aside and started anew" in log and str(aside) in log
    doc = status(env)["alarm_store"]
    assert doc["ok"] is True and doc["moved_aside"] == str(aside), doc
    assert metric(env, "hasync_alarm_store_up") == 1
    env.a.stop()  # the fresh store records alarms
    (alarm,) = wait_for(lambda: alarms_in_store(env), 10 * INTERVAL + 10, what="alarm stored")
    assert alarm["cause"] == "peer_agent_down" and alarm["cleared_at"] is None


def test_sqlite_store_that_cannot_open_is_reported_and_caught_up(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair(interval_s=INTERVAL)
    db = env.pair.base / "state" / "node-b" / "alarms.db"
    db.mkdir(parents=True)  # SQLite cannot open a directory, and it is no damaged file to move aside
    (db / "keep").write_text("an operator's mistake, not ours to remove\n")
    env.a.start()
    env.b.start()
    assert healthz(env) == 200
    replicates(env, "a.yaml")
    doc = status(env)
    store = doc["alarm_store"]
    assert store["ok"] is False and "unable to open database file" in store["error"], store
    assert store["location"] == f"sqlite:{db}"
    datetime.fromisoformat(store["since"])
    assert metric(env, "hasync_alarm_store_up") == 0
    assert "alarm store DOWN since" in env.hasync("status").stdout

    # The verdicts go on while the store is down: raised, then cleared, kept in memory.
    env.a.stop()
    wait_for(lambda: status(env)["alarms"], 10 * INTERVAL + 10, what="alarm raised in memory")
    assert metric(env, "hasync_alarm_active", node="b") == 1
    raised = status(env)["alarms"][0]
    assert raised["cause"] == "peer_agent_down"
    env.a.start()
    wait_for(lambda: not status(env)["alarms"], 10 * INTERVAL + 10, what="alarm cleared in memory")
    replicates(env, "b.yaml")
    assert status(env)["alarm_store"]["kept"] == 1
    env.a.stop()
    wait_for(lambda: status(env)["alarms"], 10 * INTERVAL + 10, what="second alarm raised in memory")
    second = status(env)["alarms"][0]
    assert healthz(env) == 200

    # The store comes back: both alarms are recorded with the times of their verdicts, the second active.
    (db / "keep").unlink()
    db.rmdir()
    wait_for(lambda: status(env)["alarm_store"]["ok"], 60, what="store back")
    assert metric(env, "hasync_alarm_store_up") == 1
    stored = sorted(alarms_in_store(env), key=lambda a: a["raised_at"])
    assert [(a["raised_at"], a["cause"]) for a in stored] == [
        (raised["raised_at"], "peer_agent_down"),
        (second["raised_at"], "peer_agent_down"),
    ], stored
    assert stored[0]["cleared_at"] is not None and stored[1]["cleared_at"] is None
    log = ha_log(env)
    assert log.count("alarm store unavailable") == 1 and log.count("alarm store available again") == 1, log
    assert "Traceback" not in log
    env.a.start()  # and the alarm, now in the store, clears as usual
    wait_for(lambda: all(a["cleared_at"] for a in alarms_in_store(env)), 10 * INTERVAL + 10, what="cleared")


class Relay:
    """A TCP relay to the real PostgreSQL server: refuses connections (nothing listens) until `open()`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port_both()
        self._server: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    def open(self) -> None:
        srv = socket.create_server(("127.0.0.1", self.port))
        self._server = srv
        t = threading.Thread(target=self._accept, args=(srv,), daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.fixture
def relay(pg_server_url: str) -> Iterator[Relay]:
    parts = urlsplit(pg_server_url)
    r = Relay((parts.hostname or "127.0.0.1", parts.port or 5432))
    yield r
    r.close()


def via(url: str, port: int) -> str:
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@127.0.0.1:{port}"))


def test_postgresql_store_down_at_start_then_up(make_pair, pg_schema_url: str, relay: Relay) -> None:  # type: ignore[no-untyped-def]
    url = via(pg_schema_url, relay.port)
    password = unquote(urlsplit(url).password or "")
    assert len(password) >= 8
    env: PairEnv = make_pair(interval_s=INTERVAL, extra=f'\n[alarms]\nstore = "{url}"\n')
    env.a.start()
    env.b.start()  # the store refuses connections: the agents start all the same
    replicates(env, "a.yaml")
    doc = status(env)
    assert doc["alarm_store"]["ok"] is False and "cannot connect" in doc["alarm_store"]["error"], doc["alarm_store"]
    assert metric(env, "hasync_alarm_store_up") == 0 and healthz(env) == 200
    env.a.stop()
    wait_for(lambda: status(env)["alarms"], 10 * INTERVAL + 10, what="alarm raised in memory")
    raised_at = status(env)["alarms"][0]["raised_at"]

    relay.open()
    wait_for(lambda: status(env)["alarm_store"]["ok"], 60, what="store back")
    with psycopg.connect(pg_schema_url) as conn:
        rows = conn.execute("SELECT host_name, cause, raised_at, cleared_at FROM alarms").fetchall()
    assert len(rows) == 1 and rows[0][:2] == ("node-b", "peer_agent_down") and rows[0][3] is None, rows
    assert abs((rows[0][2] - datetime.fromisoformat(raised_at)).total_seconds()) < 0.001  # the verdict's time
    assert metric(env, "hasync_alarm_store_up") == 1

    # The password never shows: HA logs, agent output, status, the fault-information bundle.
    bundle = env.pair.base / "bundle.tar.gz"
    r = env.hasync("collect", "--at", "now", "--before", "5m", "--after", "1m", "-o", str(bundle))
    assert r.returncode == 0, r.stderr
    with tarfile.open(bundle) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert any(name.endswith("config.toml") for name in files) and any(b"alarm_store" in d for d in files.values())
    seen = ha_log(env, "a") + ha_log(env, "b") + env.a.output() + env.b.output() + json.dumps(status(env))
    seen += r.stdout + r.stderr + b"".join(files.values()).decode(errors="replace")
    assert "alarm store unavailable" in seen and password not in seen


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:Pw-S3cret-42@[::1/db",
        "postgresql://u:Pw-S3cret-42@[::1/db?password=Pw-S3cret-43&sslmode=require",
        "postgresql://u:Pw%zzS3cret-42@db/x",
        "postgresql://u:Pw-S3cret-42@db:99999/x",
    ],
)
def test_store_url_password_masked_even_when_the_url_does_not_parse(url: str) -> None:
    secret = "Pw-S3cret-42" if "%zz" not in url else "Pw%zzS3cret-42"
    assert secret not in mask_url(url) and "***" in mask_url(url)
    assert secret in url_secrets(url)
    with pytest.raises(StoreError) as err:
        PgStore(url, connect_timeout_s=1)
    assert secret not in str(err.value) and "Pw-S3cret-43" not in str(err.value), err.value


# -- GuardedStore on a real SQLite file, in process -------------------------------------------------------------

IDENT = Identity("c1", "Flink", "FlinkServer", "node-b")
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def guarded(path: Path, **options: Any) -> GuardedStore:
    return GuardedStore(lambda: SqliteStore(path, **options), f"sqlite:{path}", retry_initial_s=0.05)


def test_guard_keeps_raise_and_clear_while_down_and_records_both(tmp_path: Path) -> None:
    db = tmp_path / "alarms.db"
    db.mkdir()
    store = guarded(db)
    assert isinstance(store, AlarmStore)
    assert store.open() is False and store.health().ok is False
    alarm, created = store.raise_alarm(IDENT, Cause.PEER_AGENT_DOWN, "info 1", T0, notify=["webhook:x"])
    assert created and alarm.id < 0 and store.active(IDENT.fingerprint) == [alarm]
    store.set_diagnosis(alarm.id, {"cause": "peer_agent_down"})
    again, created = store.raise_alarm(IDENT, Cause.DISK_FULL, "info 2", T0 + timedelta(seconds=60))
    assert not created and again.cause == "disk_full" and again.raised_at == T0
    cleared = store.clear(IDENT.fingerprint, T0 + timedelta(seconds=120), notify=["webhook:x"])
    assert cleared is not None and cleared.cleared_at == T0 + timedelta(seconds=120)
    assert store.active() == [] and store.due(T0) == []
    store.raise_alarm(IDENT, Cause.JUNK_FILE, "info 3", T0 + timedelta(seconds=180), notify=["webhook:x"])
    assert store.health().kept == 2

    db.rmdir()
    assert store.open() is True and store.health().kept == 0
    rows = sorted(store.history(), key=lambda a: a.raised_at)
    assert [(a.cause, a.raised_at, a.cleared_at) for a in rows] == [
        ("disk_full", T0, T0 + timedelta(seconds=120)),
        ("junk_file", T0 + timedelta(seconds=180), None),
    ]
    assert rows[0].diagnosis == {"cause": "peer_agent_down"}
    assert [(i.event, i.notifier) for i in store.pending()] == [
        ("raise", "webhook:x"),
        ("clear", "webhook:x"),
        ("raise", "webhook:x"),
    ]
    store.close()


def test_guard_bounds_what_it_keeps(tmp_path: Path) -> None:
    db = tmp_path / "alarms.db"
    db.mkdir()
    store = guarded(db)
    store.max_kept = 10
    store.open()
    for i in range(25):
        store.raise_alarm(IDENT, Cause.PEER_AGENT_DOWN, f"flap {i}", T0 + timedelta(seconds=2 * i))
        store.clear(IDENT.fingerprint, T0 + timedelta(seconds=2 * i + 1))
    store.raise_alarm(IDENT, Cause.PEER_AGENT_DOWN, "last", T0 + timedelta(seconds=100))
    health = store.health()
    assert health.kept == 10 and health.dropped == 16
    db.rmdir()
    assert store.open()
    (active,) = store.active()
    assert active.additional_info == "last"  # the latest verdict always survives
    store.close()


def test_guard_rides_out_a_store_locked_past_its_busy_timeout(tmp_path: Path) -> None:
    db = tmp_path / "alarms.db"
    store = guarded(db, busy_timeout_s=0.2)
    assert store.open()
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        alarm, created = store.raise_alarm(IDENT, Cause.PEER_AGENT_DOWN, "locked", T0, notify=["webhook:x"])
        assert created and alarm.id < 0 and not store.health().ok
        assert "locked" in (store.health().error or "")
        assert store.open() is False  # still locked: retried later
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert store.open() and store.health().ok
    (stored,) = store.active()
    assert (stored.raised_at, stored.id > 0) == (T0, True)
    store.close()


def test_garbage_sqlite_file_is_refused_by_commands_and_moved_aside_only_by_the_agent(tmp_path: Path) -> None:
    db = tmp_path / "alarms.db"
    db.write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(StoreUnavailable, match="not a database"):
        SqliteStore(db)
    assert db.read_bytes() == b"\x00garbage" * 1000
    store = SqliteStore(db, move_aside_damaged=True)
    assert store.moved_aside is not None and store.moved_aside.read_bytes() == b"\x00garbage" * 1000
    assert store.active() == []
    store.close()
