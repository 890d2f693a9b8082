"""The file watcher (replication/watcher.py) with two real agents: swaps by rename, symlinks, names that
are not UTF-8, inotify queue overflows, the watch limit, changes during the start-up scan, hard links."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hasync.peer.protocol import unpack
from pairlib import ROOT, PairEnv, snapshot, wait_for

FAST_S = 15  # well under the periodic rescan (300 s): only the watcher can bring a change this fast


def http(env: PairEnv, node: str, path: str) -> tuple[int, bytes]:
    port = env.pair.port_a if node == "a" else env.pair.port_b
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {env.a.token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def status(env: PairEnv, node: str) -> dict[str, Any]:
    code, body = http(env, node, "/v1/status")
    assert code == 200, body
    doc: dict[str, Any] = json.loads(body)
    return doc


def metric(env: PairEnv, node: str, name: str) -> float | None:
    code, body = http(env, node, "/metrics")
    assert code == 200
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def inotify_watches(pid: int) -> list[tuple[int, int]]:
    """(device, inode) of every inotify watch the process holds (from /proc/PID/fdinfo)."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in info.splitlines():
            if line.startswith("inotify wd:"):
                f = dict(kv.split(":", 1) for kv in line.split()[1:])
                out.append((int(f["sdev"], 16), int(f["ino"], 16)))
    return out


def write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def started(env: PairEnv) -> PairEnv:
    env.a.start()
    env.b.start()
    env.wait_in_sync()
    return env


# -- defect 1: a directory replaced by rename ---------------------------------------
def test_directory_swapped_by_rename_on_the_active_arrives(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    write_tree(env.src / "conf", {"app/a.yaml": "old a", "app/sub/b.yaml": "old b", "app/only-old": "x"})
    started(env)
    write_tree(env.src / "conf", {"app.new/a.yaml": "new a", "app.new/sub/b.yaml": "new b", "app.new/only-new": "y"})
    env.wait_in_sync()
    os.rename(env.src / "conf" / "app", env.src / "conf" / "app.old")
    os.rename(env.src / "conf" / "app.new", env.src / "conf" / "app")
    env.wait_in_sync(FAST_S)
    assert (env.dst / "conf" / "app" / "a.yaml").read_text() == "new a"
    # The new directory is watched: a later edit in it arrives too.
    (env.src / "conf" / "app" / "sub" / "b.yaml").write_text("newer b")
    env.wait_in_sync(FAST_S)


def test_sync_dir_root_swapped_by_rename_on_the_active_arrives(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    write_tree(env.src / "conf", {"a.yaml": "old a", "sub/b.yaml": "old b"})
    started(env)
    new_root = env.pair.base / "conf.new"
    write_tree(new_root, {"a.yaml": "new a", "sub/b.yaml": "new b", "c.yaml": "only new"})
    os.rename(env.src / "conf", env.pair.base / "conf.old")
    os.rename(new_root, env.src / "conf")
    env.wait_in_sync(FAST_S)
    # Edits in the new root arrive (its watches are the new directory's), none from the old one.
    (env.src / "conf" / "sub" / "b.yaml").write_text("newer b")
    (env.pair.base / "conf.old" / "a.yaml").write_text("not synced any more")
    env.wait_in_sync(FAST_S)
    assert (env.dst / "conf" / "a.yaml").read_text() == "new a"


def test_directory_swapped_on_the_standby_is_repaired(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    write_tree(env.src / "conf", {"app/a.yaml": "a", "app/sub/b.yaml": "b"})
    started(env)
    write_tree(env.dst / "conf", {"app.new/a.yaml": "drift a", "app.new/sub/b.yaml": "drift b"})
    env.wait_in_sync(FAST_S)  # app.new is drift too: removed
    write_tree(env.pair.base / "elsewhere", {"app/a.yaml": "drift a", "app/sub/b.yaml": "drift b"})
    os.rename(env.dst / "conf" / "app", env.pair.base / "app.old")
    os.rename(env.pair.base / "elsewhere" / "app", env.dst / "conf" / "app")
    env.wait_in_sync(FAST_S)
    assert (env.dst / "conf" / "app" / "a.yaml").read_text() == "a"
    # The same with the standby's sync dir root.
    write_tree(env.pair.base / "conf.drift", {"app/a.yaml": "drift a", "other.yaml": "drift"})
    os.rename(env.dst / "conf", env.pair.base / "conf.standby-old")
    os.rename(env.pair.base / "conf.drift", env.dst / "conf")
    env.wait_in_sync(FAST_S)
    assert not (env.dst / "conf" / "other.yaml").exists()
    (env.dst / "conf" / "app" / "a.yaml").write_text("drift in the new root")  # watched: repaired
    env.wait_in_sync(FAST_S)


def test_every_kind_of_drift_in_directories_the_standby_made_is_repaired(  # type: ignore[no-untyped-def]
    make_pair,
) -> None:
    """Drift in subdirectories that the initial sync created on the standby (its watches come from its own
    mkdir events), of every kind, the last one a directory swapped by rename."""
    env: PairEnv = make_pair()
    write_tree(env.src / "conf", {f"d{i:02d}/deep/f.txt": f"file {i}" for i in range(13)})
    (env.src / "conf" / "d05" / "deep" / "l").symlink_to("f.txt")
    started(env)
    b = env.dst / "conf"

    def swap() -> None:
        shutil.copytree(b / "d12", env.pair.base / "d12.x", symlinks=True)
        (env.pair.base / "d12.x" / "deep" / "f.txt").write_text("swapped")
        os.rename(b / "d12", env.pair.base / "d12.old")
        os.rename(env.pair.base / "d12.x", b / "d12")

    def relink(p: Path, target: str) -> None:
        p.unlink()
        p.symlink_to(target)

    def to_dir(p: Path) -> None:
        p.unlink()
        p.mkdir()

    kinds = [
        lambda: (b / "d00/deep/f.txt").write_text("drift"),
        lambda: (b / "d01/deep/f.txt").unlink(),
        lambda: (b / "d02/deep/new.txt").write_text("x"),
        lambda: os.chmod(b / "d03/deep/f.txt", 0o600),
        lambda: os.chmod(b / "d04/deep", 0o700),
        lambda: relink(b / "d05/deep/l", "other"),
        lambda: shutil.rmtree(b / "d06/deep"),
        lambda: (b / "d07/deep/newdir").mkdir(),
        lambda: relink(b / "d08/deep/f.txt", "/etc/passwd"),
        lambda: to_dir(b / "d09/deep/f.txt"),
        lambda: open(b / "d10/deep/f.txt", "w").close(),
        lambda: os.rename(b / "d11/deep/f.txt", b / "d11/deep/g.txt"),
        swap,
    ]
    for make_drift in kinds:
        make_drift()
        env.wait_in_sync(FAST_S)


# -- defect 2: symlinks ------------------------------------------------------------
def test_symlinked_directory_target_replicates_and_links_are_not_followed(  # type: ignore[no-untyped-def]
    make_pair, base: Path
) -> None:
    env: PairEnv = make_pair()
    write_tree(env.src / "conf", {"releases/v1/app.yaml": "v1", "releases/v1/deep/x.yaml": "x"})
    (env.src / "conf" / "current").symlink_to("releases/v1")
    outside = base / "outside"
    for i in range(20):
        (outside / f"d{i}" / "e").mkdir(parents=True)
    (env.src / "conf" / "outside-link").symlink_to(outside)
    started(env)
    (env.src / "conf" / "releases" / "v1" / "app.yaml").write_text("v1 edited")
    (env.src / "conf" / "releases" / "v1" / "deep" / "x.yaml").write_text("x edited")
    (env.src / "conf" / "releases" / "v1" / "new.yaml").write_text("new")
    env.wait_in_sync(FAST_S)
    assert os.readlink(env.dst / "conf" / "current") == "releases/v1"
    # No watch on anything outside the sync dirs (the link to `outside` is not followed).
    assert env.a.proc is not None
    outside_ids = set()
    for dirpath, _, _ in os.walk(outside):
        st = os.stat(dirpath)
        outside_ids.add(st.st_ino)
    watched = inotify_watches(env.a.proc.pid)
    assert watched, "the active agent holds no inotify watch"
    assert not {ino for _, ino in watched} & outside_ids


# -- defect 3: names that are not UTF-8 ----------------------------------------------------
def test_non_utf8_names_sync_byte_exact_and_the_watcher_survives(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    src = os.fsencode(env.src / "conf")
    dst = os.fsencode(env.dst / "conf")
    with open(src + b"/before-\xff\xfe.txt", "wb") as f:
        f.write(b"latin-1 name, made before the start")
    started(env)
    assert os.path.exists(dst + b"/before-\xff\xfe.txt")
    os.mkdir(src + b"/dir-\xe9")
    with open(src + b"/dir-\xe9/live-\xff.txt", "wb") as f:
        f.write(b"made while running")
    os.symlink(b"target-\xff", src + b"/link-\xfe")
    env.wait_in_sync(FAST_S)
    with open(dst + b"/dir-\xe9/live-\xff.txt", "rb") as f:
        assert f.read() == b"made while running"
    assert os.readlink(dst + b"/link-\xfe") == b"target-\xff"
    # The watchers still work on both nodes: an edit arrives, drift is repaired.
    (env.src / "conf" / "plain.txt").write_text("after the odd names")
    env.wait_in_sync(FAST_S)
    with open(dst + b"/before-\xff\xfe.txt", "wb") as f:
        f.write(b"drift")
    env.wait_in_sync(FAST_S)
    r = env.hasync("sync", "--once")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    # Both agents stop cleanly and save their hash caches, which hold the exact names.
    assert env.b.stop() == 0 and env.a.stop() == 0
    for node in ("a", "b"):
        cache = (env.pair.base / "state" / f"node-{node}" / "manifests" / "conf.msgpack").read_bytes()
        assert b"before-\xff\xfe.txt" in cache
        assert "Traceback" not in (env.pair.base / "logs" / f"node-{node}" / "ha.log").read_text(errors="replace")
    # sync --once without an agent (in this process) works too.
    with open(src + b"/offline-\xff", "wb") as f:
        f.write(b"x")
    env.a.start()
    r = env.hasync("sync", "--once")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert os.path.exists(dst + b"/offline-\xff")


# -- defect 4: inotify queue overflow ----------------------------------------------------
@pytest.fixture
def small_inotify_queue() -> Iterator[None]:
    """Agents started while this is active get an inotify queue of 64 events (the value is read when an
    inotify instance is made, so other processes' running watchers are not affected)."""
    knob = Path("/proc/sys/fs/inotify/max_queued_events")
    old = knob.read_text()
    knob.write_text("64\n")
    try:
        yield
    finally:
        knob.write_text(old)


@pytest.mark.skipif(not ROOT, reason="setting fs.inotify.max_queued_events needs root (CI runs as root)")
def test_inotify_queue_overflow_is_rescanned(make_pair, small_inotify_queue) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    write_tree(env.src / "conf", {f"d{i:02d}/f{j}.txt": "v0" for i in range(20) for j in range(10)})
    env.a.start()
    wait_for(lambda: http(env, "a", "/v1/info")[0] == 200, 30, what="the active to finish its start-up scan")
    Path("/proc/sys/fs/inotify/max_queued_events").write_text("16384\n")  # only the active's instance is small
    env.b.start()
    env.wait_in_sync()
    assert env.a.proc is not None
    os.kill(env.a.proc.pid, signal.SIGSTOP)  # the active reads no event while 400 changes are made
    try:
        for i in range(20):
            for j in range(10):
                (env.src / "conf" / f"d{i:02d}" / f"f{j}.txt").write_text(f"v1 {i} {j}")
            (env.src / "conf" / f"d{i:02d}" / "new.txt").write_text("new")
    finally:
        os.kill(env.a.proc.pid, signal.SIGCONT)
    env.wait_in_sync(FAST_S)
    assert status(env, "a")["watcher"]["overflows"] >= 1
    assert (metric(env, "a", "hasync_watcher_overflows_total") or 0) >= 1


# -- defect 5: the watch limit ---------------------------------------------------------
@pytest.mark.skipif(not ROOT, reason="the agent's own watch limit is set in a user namespace as root (CI runs as root)")
def test_watch_limit_is_a_visible_fault_and_changes_still_arrive(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    write_tree(env.src / "conf", {f"d{i:02d}/sub/f.txt": "v0" for i in range(10)})
    # The active runs in its own user namespace, whose inotify watch limit is 6 (the machine's is untouched).
    env.a.wrap = [
        "unshare",
        "--user",
        "--map-root-user",
        "sh",
        "-c",
        'echo 6 > /proc/sys/user/max_inotify_watches && exec "$@"',
        "sh",
    ]
    started(env)
    # Every directory's changes arrive: the watched ones by events, the others by polling.
    for i in range(10):
        (env.src / "conf" / f"d{i:02d}" / "sub" / "f.txt").write_text(f"v1 {i}")
        (env.src / "conf" / f"d{i:02d}" / "sub" / "new.txt").write_text("new")
    (env.src / "conf" / "d09" / "sub" / "newdir").mkdir()
    (env.src / "conf" / "d09" / "sub" / "newdir" / "g.txt").write_text("in a new dir")
    env.wait_in_sync(FAST_S)
    # The fault is visible in status and in the metrics.
    h = wait_for(lambda: (w := status(env, "a").get("watcher")) and w["state"] == "degraded" and w, 10)
    assert h["ok"] is False and h["polled_dirs"] > 0 and "max_user_watches" in h["error"]
    assert metric(env, "a", "hasync_watcher_ok") == 0
    assert (metric(env, "a", "hasync_watched_dirs") or 0) <= 6
    assert "file watcher degraded" in (env.pair.base / "logs" / "node-a" / "ha.log").read_text()


# -- defect 6: changes during the active's start-up scan -------------------------------------
def test_changes_during_the_start_up_scan_arrive(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    blob = os.urandom(1 << 20)
    for i in range(40):
        d = env.src / "conf" / f"d{i:02d}"
        d.mkdir(parents=True)
        (d / "big.bin").write_bytes(blob + bytes([i]))  # no hash cache yet: the scan hashes 40 MiB
        (d / "hot.txt").write_text("v0")
    env.b.start()
    env.a.start(wait=False)
    # Edit files in every directory until the active has finished its scan (/v1/info answers 200),
    # so that the last edits fall into the scan or just after it.
    n = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        n += 1
        for i in range(40):
            (env.src / "conf" / f"d{i:02d}" / "hot.txt").write_text(f"v{n}")
        code, _ = http(env, "a", "/v1/info") if env.a.healthy() else (0, b"")
        if code == 200:
            break
        time.sleep(0.01)
    for i in range(0, 40, 2):
        (env.src / "conf" / f"d{i:02d}" / "hot.txt").write_text(f"final {i}")
    env.wait_in_sync(FAST_S)
    wait_for(lambda: status(env, "b")["in_sync"] is True, FAST_S, what="the standby to say in sync")
    # No transfer loop: once in sync, the standby fetches nothing more.
    before = status(env, "b")["transferred"]["files_received"]
    time.sleep(1.0)
    assert status(env, "b")["transferred"]["files_received"] == before


def test_changes_just_after_a_sync_dir_root_reappears_arrive(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    write_tree(env.src / "conf", {"a.yaml": "a"})
    started(env)
    shutil.move(env.src / "conf", env.pair.base / "conf.away")
    wait_for(lambda: active_roots(env)["conf"] is None, 10, what="the active to see conf gone")
    shutil.move(env.pair.base / "conf.away", env.src / "conf")
    # Edit until the active has rescanned the root that came back, so that the last edits fall into
    # that rescan or just after it.
    n = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        n += 1
        for name in ("a.yaml", "b.yaml"):
            (env.src / "conf" / name).write_text(f"v{n}")
        if active_roots(env)["conf"] is not None:
            break
    env.wait_in_sync(FAST_S)


def active_roots(env: PairEnv) -> dict[str, Any]:
    code, body = http(env, "a", "/v1/info")
    assert code == 200
    roots: dict[str, Any] = unpack(body)["roots"]
    return roots


# -- defect 9: hard links ------------------------------------------------------------
def test_all_names_of_a_hard_linked_file_update(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    write_tree(env.src / "conf", {"a.yaml": "v0", "other/keep.txt": "k"})
    os.link(env.src / "conf" / "a.yaml", env.src / "conf" / "other" / "b.yaml")
    os.link(env.src / "conf" / "a.yaml", env.src / "conf" / "c.yaml")
    started(env)
    with open(env.src / "conf" / "a.yaml", "r+") as f:  # written in place through one name
        f.write("v1")
    env.wait_in_sync(FAST_S)
    assert (env.dst / "conf" / "other" / "b.yaml").read_text() == "v1"
    os.chmod(env.src / "conf" / "other" / "b.yaml", 0o600)  # metadata through another name
    env.wait_in_sync(FAST_S)
    assert snapshot(env.dst)["conf/c.yaml"][1] == 0o600


# -- supervision: a failed inotify instance is polled, then reopened ----------------------
def test_a_failed_watcher_is_polled_then_reopened(tmp_path: Path) -> None:
    import asyncio

    from hasync.replication.watcher import Batch, DirWatcher

    (tmp_path / "sub").mkdir()
    batches: list[Batch] = []

    async def sink(b: Batch) -> None:
        batches.append(b)

    async def scenario() -> None:
        w = DirWatcher("conf", tmp_path, sink)
        assert w.open()
        w.watch("")
        w.watch("sub")
        assert w.watched() == 2 and not w.unwatched
        (tmp_path / "sub" / "f").write_text("x")
        for _ in range(200):
            if batches:
                break
            await asyncio.sleep(0.01)
        assert batches and "sub/f" in batches[-1].paths
        w._fail("reading inotify events failed: test")  # what a read error does
        assert w.failed and w.unwatched == {"", "sub"} and w.watched() == 0
        for _ in range(200):  # the failure is handed on as a rescan
            if batches[-1].overflow:
                break
            await asyncio.sleep(0.01)
        assert batches[-1].overflow
        assert w.reopen() and not w.failed and w.restarts == 1
        w.watch("")
        w.watch("sub")
        assert w.watched() == 2 and not w.unwatched and w.error is None
        (tmp_path / "sub" / "g").write_text("y")
        for _ in range(200):
            if "sub/g" in batches[-1].paths:
                break
            await asyncio.sleep(0.01)
        assert "sub/g" in batches[-1].paths
        w.close()

    asyncio.run(scenario())
