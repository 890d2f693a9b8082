"""Defect 8 and the audit: a change the watchers and the hash cache missed is found, reported and repaired."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import urllib.request
from pathlib import Path

import blake3
import pytest

from hasync import hashcache
from hasync.audit import FIRST_PASS_MAX_S, Auditor, Finding
from hasync.config import load
from hasync.demo import write_pair
from hasync.manifest import RACY_NS, cache_path
from hasync.replication.active import ActiveSide
from pairlib import PairEnv, wait_for

NO_AUDIT = "\n[audit]\nenabled = false\n"


def build(env: PairEnv) -> None:
    (env.src / "conf" / "app.jar").write_bytes(os.urandom(50_000))
    (env.src / "conf" / "flink-conf.yaml").write_text("jobmanager.rpc.port: 6123\n")
    (env.src / "udf" / "lib.jar").write_bytes(os.urandom(20_000))


def rewrite_keeping_size_and_mtime(p: Path) -> bytes:
    """`cp -p` of a same-size file built with a fixed SOURCE_DATE_EPOCH: other bytes, same size and mtime."""
    st = p.stat()
    data = p.read_bytes()
    new = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
    with open(p, "r+b") as f:
        f.write(new[:64])
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = p.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    return new


def plant_behind_the_watchers(env: PairEnv, node: str, dir_name: str, rel: str) -> bytes:
    """With `node`'s agent stopped: change a file (same size, same mtime) and make its hash cache vouch for
    the old content under the new stat, as if the change had escaped every event and the ctime (a write
    to the block device, another kernel, a clock set back). Returns the new content."""
    root = env.src if node == "a" else env.dst
    cache = cache_path(env.pair.base / "state" / f"node-{node}", dir_name)
    p = root / dir_name / rel
    old = p.read_bytes()
    new = rewrite_keeping_size_and_mtime(p)
    st = p.stat()
    tree = hashcache.load(cache)
    assert tree is not None
    e = tree.get(rel)
    assert e is not None and e.digest == blake3.blake3(old).digest()
    tree.put(rel, e._replace(ino=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns))
    hashcache.save(tree, cache)
    return new


def settle(*paths: Path) -> None:
    """Wait until the files' last change is out of the racy window: the hash cache trusts them by stat
    from then on, and the audit looks at them (it leaves newer changes to their events)."""
    until = max(p.stat().st_ctime_ns for p in paths) + RACY_NS + 200_000_000
    time.sleep(max(0.0, (until - time.time_ns()) / 1e9))


def check_json(env: PairEnv, *extra: str, node: str = "b") -> tuple[int, dict[str, object]]:
    r = env.hasync("check", "--json", *extra, node=node)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout)


def test_same_size_same_mtime_rewrite_is_replicated_and_repaired(make_pair) -> None:  # type: ignore[no-untyped-def]
    """Defect 8, live: an in-place rewrite that keeps size and mtime, on the active (replicated) and on the
    standby (drift, repaired). The cached digest is not trusted after an event."""
    env: PairEnv = make_pair()  # the background audit starts its first pass minutes after start
    build(env)
    env.a.start()
    env.b.start()
    env.wait_in_sync()
    time.sleep(RACY_NS / 1e9 + 0.2)  # the cache trusts the files by stat from now on
    new = rewrite_keeping_size_and_mtime(env.src / "conf" / "app.jar")
    wait_for(lambda: (env.dst / "conf" / "app.jar").read_bytes() == new, 20, what="the rewrite on the standby")
    rewrite_keeping_size_and_mtime(env.dst / "udf" / "lib.jar")
    env.wait_in_sync(20)


def test_same_size_same_mtime_rewrite_while_the_agents_are_stopped(make_pair) -> None:  # type: ignore[no-untyped-def]
    """Defect 8, offline: the hash cache's key has the ctime, which a rewrite always changes."""
    env: PairEnv = make_pair()  # the background audit starts its first pass minutes after start
    build(env)
    env.a.start()
    env.b.start()
    env.wait_in_sync()
    time.sleep(RACY_NS / 1e9 + 0.2)
    env.a.stop()
    env.b.stop()
    new = rewrite_keeping_size_and_mtime(env.src / "conf" / "app.jar")
    rewrite_keeping_size_and_mtime(env.dst / "udf" / "lib.jar")
    env.a.start()
    env.b.start()
    env.wait_in_sync(30)
    assert (env.dst / "conf" / "app.jar").read_bytes() == new


def test_check_deep_finds_and_repairs_what_the_watchers_missed(make_pair) -> None:  # type: ignore[no-untyped-def]
    """A difference planted behind the watchers' back on each node (same size, same mtime, a hash cache
    that vouches for the old bytes): the plain check believes the trees and says in sync; `check --deep`
    reads every file on both nodes, reports both paths (exit 1), and repairs them."""
    env: PairEnv = make_pair(extra=NO_AUDIT)
    build(env)
    env.a.start()
    env.b.start()
    env.wait_in_sync()
    env.a.stop()
    env.b.stop()
    planted_a = plant_behind_the_watchers(env, "a", "conf", "app.jar")
    plant_behind_the_watchers(env, "b", "udf", "lib.jar")
    settle(env.src / "conf" / "app.jar", env.dst / "udf" / "lib.jar")
    env.a.start()
    env.b.start()
    code, doc = check_json(env)
    assert code == 0 and doc["in_sync"] is True  # what the trees believe: the reason for the audit
    assert not env.in_sync()
    code, doc = check_json(env, "--deep")
    assert code == 1 and doc["in_sync"] is False and doc["cause"] == "unknown", doc
    listed = {(o["dir"], o["path"]) for o in doc["out_of_sync"]}  # type: ignore[attr-defined]
    assert {("conf", "app.jar"), ("udf", "lib.jar")} <= listed, doc
    audit = doc["audit"]
    assert audit["differences"] == 2, audit  # type: ignore[index]
    assert {n["node"] for n in audit["nodes"].values()} == {"node-a", "node-b"}  # type: ignore[index]
    env.wait_in_sync(20)
    assert (env.dst / "conf" / "app.jar").read_bytes() == planted_a
    for node in ("a", "b"):
        log = (env.pair.base / "logs" / f"node-{node}" / "ha.log").read_text()
        assert "audit found a change the watchers missed" in log
    # Repaired: the next check, deep or not, finds the pair in sync.
    code, doc = check_json(env, "--deep", node="a")
    assert code == 0 and doc["in_sync"] is True and doc["audit"]["differences"] == 0, doc  # type: ignore[index]


def test_background_audit_finds_and_repairs_on_its_own(make_pair) -> None:  # type: ignore[no-untyped-def]
    """The background audit (a short interval here) finds a planted difference by itself: WARN in the HA
    log, the counter metric, `status`, an out-of-sync verdict at the next check, and the repair."""
    env: PairEnv = make_pair(extra="\n[audit]\ninterval_s = 1\nrate_mb_s = 20\n")
    build(env)
    env.a.start()
    env.b.start()
    env.wait_in_sync()
    env.b.stop()
    plant_behind_the_watchers(env, "b", "conf", "flink-conf.yaml")
    settle(env.dst / "conf" / "flink-conf.yaml")
    env.b.start()
    env.wait_in_sync(30)
    log = (env.pair.base / "logs" / "node-b" / "ha.log").read_text()
    assert "audit found a change the watchers missed" in log and "path=flink-conf.yaml" in log
    status = json.loads(env.hasync("status", "--json", check=True).stdout)
    audit = status["audit"]
    assert audit["mismatches_total"] >= 1 and audit["passes"] >= 1 and audit["last_pass_at"], audit
    assert any(f["path"] == "flink-conf.yaml" and f["what"] == "content" for f in audit["recent"]), audit
    req = urllib.request.Request(
        f"http://127.0.0.1:{env.pair.port_b}/metrics", headers={"Authorization": f"Bearer {env.b.token}"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        metrics = r.read().decode()
    assert "hasync_audit_mismatches_total 1.0" in metrics, metrics
    assert "hasync_audit_last_pass_timestamp_seconds" in metrics
    # The next check reports it (the pair was out of sync without anyone knowing), the one after is clean.
    code, doc = check_json(env)
    assert code == 1 and ("conf", "flink-conf.yaml") in {(o["dir"], o["path"]) for o in doc["out_of_sync"]}  # type: ignore[attr-defined]
    code, doc = check_json(env)
    assert code == 0, doc


# -- the schedule: one pass every interval_s, start to start (no processes) ---------------------------------


def make_auditor(tmp_path: Path, interval_s: float) -> Auditor:
    cfg = load(write_pair(tmp_path).config_a)
    section = cfg.audit.model_copy(update={"interval_s": interval_s})  # not validated: any interval
    return Auditor(ActiveSide(cfg), section, cfg.node.name)


def test_audit_passes_start_interval_s_apart_the_first_soon(tmp_path: Path) -> None:
    assert make_auditor(tmp_path / "1", 100.0)._until_next_pass() == 100.0
    a = make_auditor(tmp_path / "2", 14_400.0)
    assert a._until_next_pass() == FIRST_PASS_MAX_S  # the first pass within 10 minutes of start
    a._last_start = time.monotonic() - 3_600.0  # the last pass started an hour ago: the next in 3 hours
    assert 10_799.0 < a._until_next_pass() <= 10_800.0
    a._last_start = time.monotonic() - 20_000.0  # a pass that took longer than the interval: the next at once
    assert a._until_next_pass() == 0.0


def test_audit_loop_goes_on_after_a_failed_or_replaced_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    a = make_auditor(tmp_path, 0.001)
    rates: list[float | None] = []

    async def scenario() -> None:
        stop = asyncio.Event()

        async def run_pass(rate_mb_s: float | None) -> list[Finding]:
            rates.append(rate_mb_s)
            if len(rates) == 1:
                raise RuntimeError("disk on fire")
            if len(rates) == 2:
                raise asyncio.CancelledError  # as when `check --deep` replaced this pass: not a stop
            if len(rates) == 4:
                stop.set()
            return []

        monkeypatch.setattr(a, "run_pass", run_pass)
        await asyncio.wait_for(a.run(stop), 5)

    with caplog.at_level(logging.ERROR, logger="hasync.audit"):
        asyncio.run(scenario())
    assert rates == [a.cfg.rate_mb_s] * 4  # the background passes are throttled
    [failed] = [r for r in caplog.records if r.name == "hasync.audit"]
    assert failed.getMessage() == "audit pass failed" and "disk on fire" in str(failed.exc_info)


def test_audit_loop_stops_promptly_before_its_first_pass(tmp_path: Path) -> None:
    a = make_auditor(tmp_path, 14_400.0)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(a.run(stop))
        for _ in range(10):
            await asyncio.sleep(0)
        stop.set()
        await asyncio.wait_for(task, 5)  # not after the 10 minutes before the first pass

    asyncio.run(scenario())
    assert a.passes == 0
