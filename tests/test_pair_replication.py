"""Scenario tests of a pair replicating, with two real agents on 127.0.0.1: the first sync and live changes,
a file rewritten during its transfer, the standby killed mid-transfer and restarted, unreadable files on the
active, a symlinked parent and local edits on the standby, a one-off sync, stopping and restarting the agent.

(The unit tests of the replication package are in tests/replication/.)"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from pairlib import PairEnv, snapshot, temp_files, wait_for


def build_tree(root: Path) -> None:
    conf = root / "conf"
    (conf / "sub dir" / "ünïcödé").mkdir(parents=True)
    (conf / "sub dir" / "ünïcödé" / "naïve file.yaml").write_text("a: 1\n")
    (conf / "flink-conf.yaml").write_text("jobmanager.rpc.port: 6123\n")
    (conf / "empty").mkdir()
    (conf / "empty" / "nested-empty").mkdir()
    (conf / "link-inside").symlink_to("flink-conf.yaml")
    (conf / "link-outside").symlink_to("/etc/hostname")
    (conf / "dangling").symlink_to("does/not/exist")
    (conf / "private.key").write_bytes(os.urandom(3000))
    os.chmod(conf / "private.key", 0o600)
    (conf / "script.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(conf / "script.sh", 0o755)
    (conf / "readonly-dir").mkdir()
    (conf / "readonly-dir" / "x").write_text("x")
    os.chmod(conf / "readonly-dir", 0o555)
    (conf / "editor.swp").write_text("excluded")
    for i in range(50):
        (root / "udf" / f"lib-{i:02d}.jar").write_bytes(os.urandom(1000 + i * 37))


def test_initial_sync_then_live_changes_converge(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    build_tree(env.src)
    env.a.start()
    env.b.start()
    # Everything but the excluded editor file arrives whole (content, modes, links); that one never does.
    env.wait_in_sync(exclude=frozenset({"conf/editor.swp"}))
    assert not (env.dst / "conf" / "editor.swp").exists()
    (env.src / "conf" / "editor.swp").unlink()
    env.wait_in_sync()
    assert os.readlink(env.dst / "conf" / "link-outside") == "/etc/hostname"
    assert os.readlink(env.dst / "conf" / "dangling") == "does/not/exist"
    assert (env.dst / "conf" / "empty" / "nested-empty").is_dir()

    # Live changes: content, mode, rename, delete, new dir with files, type change.
    (env.src / "conf" / "flink-conf.yaml").write_text("jobmanager.rpc.port: 7000\n")
    os.chmod(env.src / "conf" / "script.sh", 0o700)
    os.rename(env.src / "udf" / "lib-00.jar", env.src / "udf" / "renamed lib.jar")
    (env.src / "udf" / "lib-01.jar").unlink()
    new = env.src / "conf" / "new" / "deep"
    new.mkdir(parents=True)
    (new / "file.txt").write_text("deep")
    (env.src / "conf" / "empty" / "nested-empty").rmdir()
    (env.src / "conf" / "empty" / "nested-empty").write_text("now a file")
    os.chmod(env.src / "conf" / "sub dir", 0o750)
    env.wait_in_sync()

    # The overwritten and deleted versions are kept in a backup set.
    backup = env.pair.base / "backup" / "node-b"
    sets = sorted(p.name for p in backup.iterdir())
    assert sets and all(s.startswith("FlinkServer_") for s in sets)
    kept = backup / sets[-1]
    assert (kept / "conf" / "flink-conf.yaml").read_text() == "jobmanager.rpc.port: 6123\n"
    assert (kept / "udf" / "lib-01.jar").exists()

    # The trees on disk are equal once the last file is renamed into place; the standby records that it is
    # in sync (and pending 0) just after. Wait for what is asserted, not for the disk.
    st = wait_for(
        lambda: (doc := json.loads(env.hasync("status", "--json", check=True).stdout))["in_sync"] is True and doc,
        30,
        what="the standby's status to say in sync",
    )
    assert st["role"] == "standby" and st["in_sync"] is True and st["lag_s"] == 0 and st["pending"] == 0
    sa = json.loads(env.hasync("status", "--json", node="a", check=True).stdout)
    assert sa["role"] == "active" and sa["peer_reachable"] is True and sa["in_sync"] is True
    assert temp_files(env.dst) == []


def test_symlinked_parent_on_standby_is_never_followed(make_pair, base: Path) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    outside = base / "outside"
    outside.mkdir()
    (env.src / "conf" / "sub").mkdir()
    (env.src / "conf" / "sub" / "victim.txt").write_text("from active")
    (env.dst / "conf" / "sub").symlink_to(outside)
    env.a.start()
    env.b.start()
    env.wait_in_sync()
    assert list(outside.iterdir()) == []
    assert (env.dst / "conf" / "sub").is_dir() and not (env.dst / "conf" / "sub").is_symlink()


def test_large_file_and_rewrite_during_transfer_never_torn(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    big = env.src / "udf" / "big.bin"
    with open(big, "wb") as f:
        for _ in range(100):
            f.write(os.urandom(1 << 20))
    env.a.start()
    env.b.start()
    env.wait_in_sync(120)
    assert (env.dst / "udf" / "big.bin").stat().st_size == 100 << 20

    # A file rewritten in place, over and over, while the standby copies it:
    # the standby never shows a mix of two versions.
    hot = env.src / "udf" / "hot.bin"
    size = 8 << 20
    stop_writing, stop_observing = threading.Event(), threading.Event()
    versions: list[int] = []

    def writer() -> None:
        v = 0
        while not stop_writing.is_set() and v < 40:
            v += 1
            with open(hot, "wb") as f:
                for _ in range(size // (1 << 20)):
                    f.write(bytes([v]) * (1 << 20))
                    time.sleep(0.002)
            versions.append(v)

    seen: set[tuple[int, int]] = set()

    def observe() -> None:
        while not stop_observing.is_set():
            try:
                data = (env.dst / "udf" / "hot.bin").read_bytes()
            except FileNotFoundError:
                continue
            seen.add((len(data), len(set(data))))

    writing, observing = threading.Thread(target=writer), threading.Thread(target=observe)
    writing.start()
    observing.start()
    time.sleep(4)
    stop_writing.set()
    writing.join()
    # The writer always ends on a whole version: keep watching the standby until it shows one, rather than
    # for a fixed time that a loaded machine may not give it.
    try:
        wait_for(lambda: (size, 1) in seen, 60, what="the standby to show a whole version of the hot file")
    finally:
        stop_observing.set()
        observing.join()
    env.wait_in_sync(60)
    assert seen, "the standby never showed the hot file"
    # Each state shown is one that existed on the active (the writer truncates, then
    # appends a MiB at a time): one version's bytes only, never two versions mixed.
    assert all(distinct <= 1 and length % (1 << 20) == 0 for length, distinct in seen), seen
    assert (size, 1) in seen
    assert temp_files(env.dst) == []


def test_kill9_standby_mid_transfer_then_restart_converges(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    for i in range(4):
        with open(env.src / "udf" / f"large-{i}.bin", "wb") as f:
            for _ in range(40):
                f.write(os.urandom(1 << 20))
    for i in range(300):
        (env.src / "conf" / f"small-{i}.conf").write_text(f"value={i}\n" * 20)
    # An old version on the standby that must stay whole until replaced.
    (env.dst / "udf" / "large-0.bin").write_bytes(b"old" * 1000)
    env.a.start()
    env.b.start()
    wait_for(lambda: temp_files(env.dst), 60, interval=0.002, what="a transfer in progress")
    env.b.kill9()
    src = snapshot(env.src)
    for rel, meta in snapshot(env.dst).items():
        if meta[0] == "f" and ".hasync-tmp-" not in rel:
            # Every file under its real name is complete: the old version or the new.
            assert meta == src.get(rel) or (rel == "udf/large-0.bin" and meta[2] == 3000), rel
    assert temp_files(env.dst), "kill -9 mid-transfer should leave temp files for the restart to remove"
    env.b.start()
    env.wait_in_sync(120)
    assert temp_files(env.dst) == []
    # Small files' temp files are removed at the restart; a big file's partial one is resumed (test_resume.py).
    log = (env.pair.base / "logs" / "node-b" / "ha.log").read_text()
    assert "removed leftover temp files" in log or "partial transfers kept to resume" in log


def test_unreadable_files_on_active_reported_rest_syncs(make_pair) -> None:  # type: ignore[no-untyped-def]
    # The agents run as an unprivileged user (nobody when the suite runs as root):
    # root reads mode-000 files, so they would sync instead of failing.
    _unreadable_scenario(make_pair(unprivileged=True))


def _unreadable_scenario(env: PairEnv) -> None:
    conf = env.src / "conf"
    (conf / "good.yaml").write_text("ok")
    junk = conf / "sedXyZ12"
    junk.touch()
    junk.chmod(0)
    secret = conf / "secret.conf"
    secret.write_text("password=1")
    secret.chmod(0)
    env.chown_all()
    env.a.start()
    env.b.start()
    wait_for(lambda: (env.dst / "conf" / "good.yaml").exists(), 30, what="good file synced")

    def causes() -> dict[str, str]:
        st = json.loads(env.hasync("status", "--json").stdout)
        return {f"{e['dir']}/{e['path']}": e["cause"] for e in st["errors"]}

    found = wait_for(lambda: len(causes()) == 2 and causes(), 30, what="both unreadable files reported")
    assert found == {"conf/sedXyZ12": "junk_file", "conf/secret.conf": "permission_denied"}
    st = json.loads(env.hasync("status", "--json").stdout)
    assert st["in_sync"] is False
    # The rest keeps syncing.
    (conf / "later.yaml").write_text("later")
    wait_for(lambda: (env.dst / "conf" / "later.yaml").exists(), 20, what="later file synced")
    r = env.hasync("sync", "--once")
    assert r.returncode == 1
    assert "conf/sedXyZ12: junk_file" in r.stdout and "conf/secret.conf: permission_denied" in r.stdout
    # Fixing them clears the errors.
    junk.unlink()
    secret.chmod(0o644)
    wait_for(lambda: not causes(), 30, what="errors cleared")
    env.wait_in_sync()


def test_sync_once_standalone_and_via_agent(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    build_tree(env.src)
    (env.src / "conf" / "editor.swp").unlink()
    env.a.start()
    r = env.hasync("sync", "--once", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["in_sync"] is True and doc["files"] > 50
    assert env.in_sync()
    # No change: nothing transferred.
    doc = json.loads(env.hasync("sync", "--once", "--json", check=True).stdout)
    assert doc["files"] == 0 and doc["bytes"] == 0
    # With the standby's agent running the command asks the agent (its log shows the request).
    env.b.start()
    (env.dst / "conf" / "flink-conf.yaml").write_text("tampered on the standby")
    doc = json.loads(env.hasync("sync", "--once", "--json", check=True).stdout)
    assert doc["in_sync"] is True
    assert env.in_sync()
    assert "sync requested" in (env.pair.base / "logs" / "node-b" / "ha.log").read_text()
    # On the active node the request goes to the standby's agent.
    assert env.hasync("sync", "--once", node="a").returncode == 0
    # The active's agent stopped: not in sync, exit 1, with the cause.
    env.a.stop()
    r = env.hasync("sync", "--once")
    assert r.returncode == 1 and "peer_agent_down" in r.stdout


def test_agent_stops_within_5s(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    env.a.start()
    env.b.start()
    time.sleep(0.5)  # the standby is now in its long-poll
    for agent in (env.b, env.a):
        t0 = time.monotonic()
        assert agent.stop(timeout=10) == 0
        assert time.monotonic() - t0 < 5
    log = (env.pair.base / "logs" / "node-b" / "ha.log").read_text()
    assert "agent stopped" in log


def test_restart_standby_keeps_hash_cache_and_converges(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    build_tree(env.src)
    (env.src / "conf" / "editor.swp").unlink()
    env.a.start()
    env.b.start()
    env.wait_in_sync()
    env.b.stop()
    (env.src / "conf" / "while-down.txt").write_text("x")
    (env.src / "udf" / "lib-05.jar").unlink()
    env.b.start()
    env.wait_in_sync()
    assert (env.pair.base / "state" / "node-b" / "manifests" / "conf.msgpack").exists()


def test_local_changes_on_the_standby_are_repaired(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    build_tree(env.src)
    (env.src / "conf" / "editor.swp").unlink()
    env.a.start()
    env.b.start()
    env.wait_standby_in_sync()  # its first reconcile is over: its watcher is on
    # Someone edits, deletes and adds files on the standby: the standby's watcher notices
    # and the copy is made exact again, with no change on the active (long before the full
    # reconcile of every full_reconcile_s, 300 s, would).
    (env.dst / "conf" / "flink-conf.yaml").write_text("edited on the standby")
    (env.dst / "udf" / "lib-07.jar").unlink()
    (env.dst / "udf" / "stray.jar").write_text("not on the active")
    os.chmod(env.dst / "conf" / "script.sh", 0o600)
    env.wait_in_sync(30)
    log = (env.pair.base / "logs" / "node-b" / "ha.log").read_text()
    assert "changed locally, repairing" in log


def test_local_change_during_a_repair_is_repaired_too(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    build_tree(env.src)
    (env.src / "conf" / "editor.swp").unlink()
    big = env.src / "udf" / "big.bin"
    with open(big, "wb") as f:
        for _ in range(100):
            f.write(os.urandom(1 << 20))
    env.a.start()
    env.b.start()
    env.wait_in_sync(120)
    env.wait_standby_in_sync()
    # A local edit of the big file: its repair holds the standby's writer lock while 100 MiB come back.
    with open(env.dst / "udf" / "big.bin", "r+b") as f:
        f.write(b"edited on the standby")
    wait_for(lambda: temp_files(env.dst), 30, interval=0.002, what="the big file's repair in progress")
    # A second local change while that repair runs: its event is looked at once the repair's writes
    # are done, and it must bring a repair of its own (not wait for the full reconcile, 300 s away).
    (env.dst / "udf" / "lib-07.jar").unlink()
    env.wait_in_sync(30)  # without the second repair: not before the full reconcile, 300 s away
    assert (env.dst / "udf" / "lib-07.jar").read_bytes() == (env.src / "udf" / "lib-07.jar").read_bytes()
    log = (env.pair.base / "logs" / "node-b" / "ha.log").read_text()
    assert "changed locally, repairing dir=udf path=big.bin" in log  # one line per repair, not one per path
