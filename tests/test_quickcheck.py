"""The quick check: a no-change `sync --once` without an agent trusts its index only while the disk agrees."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hasync import manifest
from hasync.fsutil import TMP_PREFIX
from hasync.manifest import Excluder, scan
from hasync.quickcheck import QuickCheck, QuickIndex, index_path, unchanged
from pairlib import PairEnv, wait_for

OLD = time.time() - 3600
AGENTS_RACY_NS = manifest.RACY_NS  # the agents' racy window (the fixture below sets this process's to 0)


@pytest.fixture(autouse=True)
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """The files here were all written just now; the racy window is on the ctime, which cannot be set
    back: without it the hash cache trusts them by inode (in this process; agents keep theirs)."""
    monkeypatch.setattr(manifest, "RACY_NS", 0)


def age(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for n in filenames:
            os.utime(os.path.join(dirpath, n), (OLD, OLD), follow_symlinks=False)


def make_tree(root: Path) -> None:
    (root / "conf" / "sub").mkdir(parents=True)
    (root / "lib").mkdir()
    (root / "empty").mkdir()
    (root / "conf" / "flink-conf.yaml").write_text("jobmanager.rpc.port: 6123\n")
    (root / "conf" / "sub" / "log4j.properties").write_text("rootLogger.level = INFO\n")
    for i in range(30):
        (root / "lib" / f"udf-{i:02d}.jar").write_bytes(os.urandom(100 + i))
    os.symlink("udf-00.jar", root / "lib" / "current.jar")
    age(root)


def index_of(root: Path, exclude: Excluder) -> QuickIndex:
    idx = QuickIndex.of(scan(root, exclude))
    assert idx.complete, idx
    return idx


def still(root: Path, idx: QuickIndex, exclude: Excluder) -> bool:
    return unchanged(str(root), [(d, s) for d, s, _ in idx.dirs], exclude)


def rewrite_same_size_and_mtime(root: Path) -> None:
    # A new inode (temp + rename, as editors and cp do) with the same size and mtime.
    p = root / "conf" / "flink-conf.yaml"
    tmp = root / "conf" / "new"
    tmp.write_text("jobmanager.rpc.port: 6124\n")
    os.utime(tmp, (OLD, OLD))
    os.rename(tmp, p)


def retarget_link_same_length(root: Path) -> None:
    link = root / "lib" / "current.jar"
    link.unlink()
    os.symlink("udf-01.jar", link)


def dir_replaced_by_a_link(root: Path) -> None:
    shutil.rmtree(root / "conf" / "sub")
    os.symlink("/etc", root / "conf" / "sub")


CHANGES: dict[str, Callable[[Path], object]] = {  # what a change returns is ignored
    "append": lambda r: (r / "conf" / "flink-conf.yaml").open("a").write("x"),
    "touch": lambda r: os.utime(r / "lib" / "udf-03.jar"),
    "rewrite, same size and mtime": rewrite_same_size_and_mtime,
    "chmod file": lambda r: (r / "lib" / "udf-04.jar").chmod(0o600),
    "chmod dir": lambda r: (r / "conf" / "sub").chmod(0o700),
    "new file deep": lambda r: (r / "conf" / "sub" / "new.yaml").write_text("n"),
    "new empty dir": lambda r: (r / "empty" / "inner").mkdir(),
    "delete file": lambda r: (r / "lib" / "udf-05.jar").unlink(),
    "delete empty dir": lambda r: (r / "empty").rmdir(),
    "rename": lambda r: (r / "lib" / "udf-06.jar").rename(r / "lib" / "udf-66.jar"),
    "link retarget, same length": retarget_link_same_length,
    "temp file left by a crash": lambda r: (r / "lib" / f"{TMP_PREFIX}x").write_bytes(b""),
    "dir replaced by a link": dir_replaced_by_a_link,
    "sync dir gone": lambda r: shutil.rmtree(r),
}


def test_an_untouched_copy_is_unchanged_and_its_root_is_the_trees(tmp_path: Path) -> None:
    make_tree(tmp_path)
    ex = Excluder([])
    tree = scan(tmp_path, ex)
    idx = QuickIndex.of(tree)
    assert idx.complete and idx.root == tree.root_hash()
    assert {d for d, _, _ in idx.dirs} == {"", "conf", "conf/sub", "lib", "empty"}
    assert still(tmp_path, idx, ex)
    # Saved and loaded, it is the same index.
    path = index_path(tmp_path.parent / "state.msgpack")
    idx.save(path)
    assert QuickIndex.load(path) == idx


@pytest.mark.parametrize("change", list(CHANGES))
def test_every_change_is_seen(tmp_path: Path, change: str) -> None:
    root = tmp_path / "data"
    root.mkdir()
    make_tree(root)
    ex = Excluder([])
    idx = index_of(root, ex)
    CHANGES[change](root)
    assert not still(root, idx, ex)


def test_excluded_paths_do_not_count(tmp_path: Path) -> None:
    make_tree(tmp_path)
    ex = Excluder(["*.swp", "/conf/sub/"])
    (tmp_path / "conf" / "sub" / "ignored.txt").write_text("x")
    idx = index_of(tmp_path, ex)
    (tmp_path / "conf" / "editor.swp").write_text("x")
    (tmp_path / "conf" / "sub" / "also-ignored.txt").write_text("x")
    assert still(tmp_path, idx, ex)
    # An index made under other exclude rules does not match.
    assert not still(tmp_path, idx, Excluder(["*.swp"]))


def test_a_file_the_cache_does_not_trust_leaves_no_quick_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path)
    monkeypatch.setattr(manifest, "RACY_NS", 1_000_000_000)  # fresh.jar is in it, make_tree's files are not
    time.sleep(1.1)
    (tmp_path / "lib" / "fresh.jar").write_bytes(b"just written")  # inside the racy window
    idx = QuickIndex.of(scan(tmp_path, Excluder([])))
    assert not idx.complete
    assert [d for d, s, _ in idx.dirs if s is None] == ["lib"]
    cache = tmp_path.parent / "c.msgpack"
    idx.save(index_path(cache))
    assert QuickCheck.prepare({"data": (tmp_path, cache)}, Excluder([])) is None


def test_a_damaged_or_foreign_index_is_not_used(tmp_path: Path) -> None:
    path = tmp_path / "x.quick"
    assert QuickIndex.load(path) is None
    path.write_bytes(b"\x93\x01")
    assert QuickIndex.load(path) is None
    path.write_bytes(b"\x81\xa1v\x63")  # {"v": 99}
    assert QuickIndex.load(path) is None


@pytest.mark.parametrize("forked", [True, False])
def test_the_check_split_over_workers_sees_a_change_in_any_share(tmp_path: Path, forked: bool) -> None:
    root = tmp_path / "data"
    for i in range(8):
        (root / f"d{i}").mkdir(parents=True)
        for j in range(20):
            (root / f"d{i}" / f"f{j}").write_text(f"{i}.{j}")
    age(root)
    ex = Excluder([])
    cache = tmp_path / "data.msgpack"
    index_of(root, ex).save(index_path(cache))

    def run() -> bool:
        idx = QuickIndex.load(index_path(cache))
        assert idx is not None
        qc = QuickCheck({"data": (root, idx)}, ex, workers=2)
        if forked:
            qc.start()
        return qc.finish()

    assert run()
    for i in (0, 7):  # the first share and the last
        p = root / f"d{i}" / "f3"
        p.write_text("changed")
        assert not run(), i
        p.write_text(f"{i}.3")
        os.utime(p, (OLD, OLD))
        # The same size and mtime as before, but written: its ctime says so, and the full scan looks.
        assert not run()


def sync_json(env: PairEnv) -> dict[str, object]:
    r = env.hasync("sync", "--once", "--json")
    doc: dict[str, object] = json.loads(r.stdout)
    assert r.returncode == (0 if doc["in_sync"] else 1), r.stderr
    return doc


def test_sync_once_takes_the_quick_path_only_when_nothing_changed(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    make_tree(env.src / "conf")
    env.a.start()
    first = sync_json(env)
    assert first["in_sync"] is True and first["method"] == "full" and first["files"] == 32
    assert env.in_sync()
    # Nothing changed: the quick check answers, nothing is transferred.
    doc = sync_json(env)
    assert doc == {**doc, "in_sync": True, "method": "quick", "files": 0, "bytes": 0}
    # Someone changes the standby's copy: the quick check sees it, the full path repairs it.
    (env.dst / "conf" / "conf" / "flink-conf.yaml").write_text("tampered on the standby\n")
    doc = sync_json(env)
    assert doc["in_sync"] is True and doc["method"] == "full" and doc["files"] == 1
    assert env.in_sync()
    # Its scan saw files changed within the racy window (ctime): the cache trusts them again once a
    # scan sees them settled, and from then on the quick check answers.
    wait_for(lambda: sync_json(env)["method"] == "quick", 20, what="the quick path again")
    # A change on the active: the local copy is unchanged, but the roots differ.
    (env.src / "conf" / "lib" / "udf-99.jar").write_bytes(b"new")
    age(env.src / "conf" / "lib")  # else the standby's scans distrust it by inode for 2 s (racy mtime)
    wait_for(lambda: sync_json(env)["files"] == 1, 20, what="the new file fetched")
    assert env.in_sync()
    # A temp file a crash left: the full path removes it.
    left = env.dst / "conf" / "lib" / f"{TMP_PREFIX}crash"
    left.write_bytes(b"partial")
    assert sync_json(env)["method"] == "full" and not left.exists()
    # The standby's agent writes the index when it stops: the next run without it is quick. (Its scans
    # must see the files settled, out of the racy window, to trust them by inode.)
    newest = max(os.lstat(os.path.join(d, n)).st_ctime_ns for d, _, ns in os.walk(env.dst) for n in ns)
    time.sleep(max(0.0, (newest + AGENTS_RACY_NS + 200_000_000 - time.time_ns()) / 1e9))
    env.b.start()
    assert sync_json(env)["method"] == "agent"
    env.b.stop()
    assert sync_json(env)["method"] == "quick"
    # The active's agent is down: the quick path says so, with the cause.
    env.a.stop()
    doc = sync_json(env)
    assert doc["in_sync"] is False and doc["method"] == "quick" and doc["cause"] == "peer_agent_down"
