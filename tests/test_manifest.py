"""Manifests: scanning, the hash cache, Merkle hashes and diffing (property-based)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import blake3
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hasync import hashcache, manifest
from hasync.errors import Cause, ScanError
from hasync.manifest import DIR, ERROR, FILE, LINK, Entry, Excluder, Plan, Tree, diff, scan

NAMES = st.sampled_from(["a", "b", "c", "d d", "é", "x.swp"])
KINDS = st.sampled_from([FILE, DIR, LINK])


@st.composite
def trees(draw: st.DrawFn, depth: int = 0) -> dict[str, Entry | dict]:  # type: ignore[type-arg]
    out: dict[str, Entry | dict] = {}  # type: ignore[type-arg]
    for name in draw(st.lists(NAMES, unique=True, max_size=4)):
        kind = draw(KINDS) if depth < 2 else draw(st.sampled_from([FILE, LINK]))
        mode = draw(st.sampled_from([0o644, 0o600, 0o755]))
        if kind == DIR:
            out[name] = [Entry(DIR, mode), draw(trees(depth + 1))]  # type: ignore[assignment]
        elif kind == FILE:
            out[name] = Entry(FILE, mode, 1, 0, draw(st.sampled_from([b"1" * 32, b"2" * 32])))
        else:
            out[name] = Entry(LINK, 0o777, link=draw(st.sampled_from(["a", "../b", "/etc"])))
    return out


def build(spec: dict, tree: Tree | None = None, prefix: str = "") -> Tree:  # type: ignore[type-arg]
    tree = tree or Tree()
    for name, val in spec.items():
        rel = f"{prefix}/{name}" if prefix else name
        if isinstance(val, list):
            tree.put(rel, val[0])
            build(val[1], tree, rel)
        else:
            tree.put(rel, val)
    return tree


def apply(plan: Plan, have: Tree, want: Tree) -> None:
    """A model of the standby's Applier: what it does to its tree."""
    for rel in plan.delete:
        have.remove(rel)
    for rel, e in plan.make:
        have.put(rel, e)
    for rel, e in plan.chmod:
        have.put(rel, e)
    for rel in plan.fetch:
        fetched = want.get(rel)
        assert fetched is not None
        have.put(rel, fetched)


@settings(max_examples=300, deadline=None)
@given(trees(), trees())
def test_diff_then_apply_gives_equal_trees(want_spec: dict, have_spec: dict) -> None:  # type: ignore[type-arg]
    want, have = build(want_spec), build(have_spec)
    plan = diff(want, have)
    apply(plan, have, want)
    assert have.root_hash() == want.root_hash()
    assert dict(have.items()) == dict(want.items())
    assert not diff(want, have)


@settings(max_examples=200, deadline=None)
@given(trees(), trees())
def test_root_hash_equal_iff_trees_equal(a_spec: dict, b_spec: dict) -> None:  # type: ignore[type-arg]
    a, b = build(a_spec), build(b_spec)
    same = dict(a.items()) == dict(b.items())
    assert (a.root_hash() == b.root_hash()) == same


@settings(max_examples=100, deadline=None)
@given(trees(), st.data())
def test_incremental_hash_matches_fresh_build(spec: dict, data: st.DataObject) -> None:  # type: ignore[type-arg]
    t = build(spec)
    t.root_hash()
    paths = [p for p, _ in t.items()]
    if paths:
        victim = data.draw(st.sampled_from(paths))
        t.remove(victim)
    t.put("new-file", Entry(FILE, 0o644, 1, 0, b"9" * 32))
    fresh = Tree()
    for p, e in t.items():
        fresh.put(p, e)
    assert t.root_hash() == fresh.root_hash()


def test_error_entries_are_reported_not_fetched_or_deleted() -> None:
    want, have = Tree(), Tree()
    want.put("bad", Entry(ERROR, 0, error=ScanError(Cause.PERMISSION_DENIED, "Permission denied")))
    have.put("bad", Entry(FILE, 0o644, 1, 0, b"x" * 32))
    plan = diff(want, have)
    assert plan.errors == [("bad", want.get("bad"))] and not plan.fetch and not plan.delete


def test_scan_reuses_cached_digests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest, "RACY_NS", 0)  # the file was written just now: no racy window here
    f = tmp_path / "f"
    f.write_bytes(b"hello")
    old = time.time_ns() - 10_000_000_000
    os.utime(f, ns=(old, old))
    first = scan(tmp_path, Excluder([]))
    e = first.get("f")
    assert e is not None and e.ino and e.ctime_ns == f.stat().st_ctime_ns
    # Same inode, size, mtime and ctime: the cached digest is reused, the file is not read.
    poisoned = Tree()
    poisoned.put("f", e._replace(digest=b"cached" * 5 + b"xx"))
    assert scan(tmp_path, Excluder([]), poisoned).get("f").digest == b"cached" * 5 + b"xx"  # type: ignore[union-attr]
    # A change of mtime forces a re-hash.
    os.utime(f, ns=(old + 1, old + 1))
    assert scan(tmp_path, Excluder([]), poisoned).get("f").digest == e.digest  # type: ignore[union-attr]


def test_same_size_same_mtime_rewrite_is_rehashed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`cp -p` of a same-size file, or a write followed by a utime that puts the mtime back: only the
    ctime shows the change, and the cache must not trust the old digest (defect 8)."""
    monkeypatch.setattr(manifest, "RACY_NS", 0)
    f = tmp_path / "app.jar"
    f.write_bytes(b"version-1")
    old = time.time_ns() - 10_000_000_000
    os.utime(f, ns=(old, old))
    first = scan(tmp_path, Excluder([]))
    assert first.get("f") is None and first.get("app.jar").ino  # type: ignore[union-attr]
    time.sleep(0.01)
    with open(f, "r+b") as w:
        w.write(b"version-2")
    os.utime(f, ns=(old, old))
    st = f.stat()
    assert (st.st_size, st.st_mtime_ns) == (9, old)
    again = scan(tmp_path, Excluder([]), first)
    assert again.get("app.jar").digest == blake3.blake3(b"version-2").digest()  # type: ignore[union-attr]
    assert again.changed


def test_recent_files_are_not_trusted_from_the_cache(tmp_path: Path) -> None:
    (tmp_path / "fresh").write_bytes(b"x")
    assert scan(tmp_path, Excluder([])).get("fresh").ino == 0  # type: ignore[union-attr]


def test_cache_roundtrip(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    (tmp_path / "l").symlink_to("d/f")
    t = scan(tmp_path, Excluder([]))
    hashcache.save(t, tmp_path / "cache")
    loaded = hashcache.load(tmp_path / "cache")
    assert loaded is not None and dict(loaded.items()) == dict(t.items())
    (tmp_path / "cache").write_bytes(b"garbage")
    assert hashcache.load(tmp_path / "cache") is None


def test_excluder_name_and_path_patterns() -> None:
    ex = Excluder(["*.swp", "logs/*.log", "/tmp"])
    assert ex("a/b/c.swp", "c.swp")
    assert ex("logs/x.log", "x.log") and not ex("other/x.log", "x.log")
    assert ex("tmp", "tmp") and not ex("a/tmp", "tmp")


@settings(max_examples=100, deadline=None)
@given(trees(), st.data())
def test_error_index_matches_a_walk(spec: dict, data: st.DataObject) -> None:  # type: ignore[type-arg]
    t = build(spec)
    paths = [p for p, _ in t.items()]
    leaves = [p for p, e in t.items() if e.kind != DIR]  # an entry becomes unreadable; its parent stays a dir
    for p in data.draw(st.lists(st.sampled_from(leaves), max_size=4, unique=True)) if leaves else []:
        t.put(p, Entry(ERROR, 0, error=ScanError(Cause.PERMISSION_DENIED, "Permission denied")))
    if paths:
        t.remove(data.draw(st.sampled_from(paths)))
    walked = [(p, e) for p, e in sorted(t.items()) if e.kind == ERROR]
    assert t.errors() == walked
    assert hashcache.loads(hashcache.dump(t)).errors() == walked


# -- typed values, unchanged bytes ------------------------------------------------------------------------
def _typed_tree() -> Tree:
    t = Tree()
    t.put("d", Entry(DIR, 0o755, ino=7, dev=1))
    t.put("d/f", Entry(FILE, 0o644, 3, 11, b"\1" * 32, uid=5, gid=6, ino=9, ctime_ns=12))
    t.put("l", Entry(LINK, 0o777, 2, 13, link="d/f"))
    t.put("sed1", Entry(ERROR, 0, error=ScanError(Cause.JUNK_FILE, "Permission denied: x: y")))
    return t


def test_the_hash_cache_keeps_kind_letters_and_error_text() -> None:
    # The cache as the string-typed code wrote it: typing the values changed no byte.
    rows = [
        ["d", "d", 0o755, 0, 0, b"", "", 0, 0, 7, "", 1, 0],
        ["l", "l", 0o777, 2, 13, b"", "d/f", 0, 0, 0, "", 0, 0],
        ["sed1", "e", 0, 0, 0, b"", "", 0, 0, 0, "junk_file: Permission denied: x: y", 0, 0],
        ["d/f", "f", 0o644, 3, 11, b"\1" * 32, "", 5, 6, 9, "", 0, 12],
    ]
    t = _typed_tree()
    assert hashcache.dump(t) == msgpack.packb({"v": 1, "with_owner": False, "rows": rows}, use_bin_type=True)
    back = hashcache.loads(hashcache.dump(t))
    assert dict(back.items()) == dict(t.items())
    assert all(type(e.kind) is manifest.Kind for _, e in back.items())
    err = back.get("sed1")
    assert err is not None and err.error == ScanError(Cause.JUNK_FILE, "Permission denied: x: y")
    assert back.get("d/f") == t.get("d/f") and back.get("d/f").error is None  # type: ignore[union-attr]


def test_merkle_records_keep_kind_letters_and_error_text() -> None:
    t = _typed_tree()
    sub = blake3.blake3(b"f\0f\0" + b"644\0" + b"\1" * 32 + b"\n").digest(16)
    h = blake3.blake3()
    h.update(b"d\0d\0" + b"755" + sub + b"\n")
    h.update(b"l\0l\0" + b"777\0d/f\n")
    h.update(b"sed1\0e\0" + b"0\0junk_file: Permission denied: x: y\n")
    assert t.dir_hash("d") == sub
    assert t.root_hash() == h.digest(16)


def test_a_scan_error_keeps_cause_and_message_exactly() -> None:
    for err in (
        ScanError(Cause.PERMISSION_DENIED, "Permission denied"),
        ScanError(Cause.SYNC_ERROR, "a: b: c"),
        ScanError(Cause.DISK_FULL, ""),
    ):
        assert ScanError.from_text(str(err)) == err
        t = Tree()
        t.put("x", Entry(ERROR, 0, error=err))
        again = hashcache.loads(hashcache.dump(t)).get("x")
        assert again is not None and again.error == err and again.cause is err.cause
    # An unknown cause in a cache or on the wire: sync_error, the text kept whole.
    assert ScanError.from_text("newer: boom") == ScanError(Cause.SYNC_ERROR, "newer: boom")


def test_an_unreadable_path_gets_the_junk_rule(tmp_path: Path) -> None:
    (tmp_path / "sedX").write_bytes(b"")
    os.chmod(tmp_path / "sedX", 0)
    st = os.lstat(tmp_path / "sedX")
    e = manifest.error_entry("sedX", st, PermissionError(13, "Permission denied"))
    assert e.kind is ERROR and e.error == ScanError(Cause.JUNK_FILE, "Permission denied")
    e = manifest.error_entry("sedX", st, OSError(5, "Input/output error"))
    assert e.error == ScanError(Cause.SYNC_ERROR, "Input/output error")


def test_a_hash_cache_save_that_fails_leaves_the_old_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = Tree()
    t.put("a", Entry(FILE, 0o644, 1, 1))
    hashcache.save(t, tmp_path / "cache")
    t.put("b", Entry(FILE, 0o644, 2, 2))
    monkeypatch.setattr(t, "items", lambda top="": iter([("a", t.get("a"))]))  # fewer rows than announced
    with pytest.raises(ValueError):
        hashcache.save(t, tmp_path / "cache")
    back = hashcache.load(tmp_path / "cache")
    assert back is not None and back.get("a") is not None and back.get("b") is None
    assert os.listdir(tmp_path) == ["cache"]  # no temp file left
