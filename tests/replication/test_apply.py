"""replication/apply.py: the Applier on tmp dirs (new files, replacements with backup, kinds changing,
symlinks, temp names, failures that leave the old file) and the Failures of a run."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from hasync.backup import BackupSets
from hasync.config import SyncDir
from hasync.errors import Cause, PathRefused
from hasync.fsutil import is_tmp_name
from hasync.manifest import DIR, FILE, LINK, Entry, Tree
from hasync.replication.apply import Applier, Failures, FileWriter

MTIME = 1_600_000_000_000_000_000


class Standby:
    """A standby's sync dir with its backup sets."""

    def __init__(self, base: Path) -> None:
        self.root = base / "data"
        self.root.mkdir()
        self.d = SyncDir(name="data", path=self.root)
        self.tree = Tree()
        self.backups = BackupSets(base / "backup", "FlinkServer", period_s=3600)

    def applier(self, fsync_each: bool = False) -> Applier:
        return Applier(self.d, self.tree, self.backups, as_root=False, fsync_each=fsync_each)

    def backed_up(self) -> dict[str, bytes | str]:
        """What the backup sets hold: path in the set -> content (a link: its target)."""
        out: dict[str, bytes | str] = {}
        for s in self.backups.sets():
            for top, dirs, names in os.walk(s):
                for n in names + [x for x in dirs if os.path.islink(os.path.join(top, x))]:
                    p = os.path.join(top, n)
                    rel = os.path.relpath(p, s)
                    out[rel] = os.readlink(p) if os.path.islink(p) else Path(p).read_bytes()
        return out

    def temps(self) -> list[str]:
        return [n for _, _, names in os.walk(self.root) for n in names if is_tmp_name(n)]


@pytest.fixture
def sb(tmp_path: Path) -> Iterator[Standby]:
    yield Standby(tmp_path)


def meta(data: bytes, mode: int = 0o644) -> Entry:
    return Entry(FILE, mode, len(data), MTIME, uid=os.getuid(), gid=os.getgid())


def write(a: Applier, rel: str, data: bytes, mode: int = 0o644, digest: bytes | None = None) -> FileWriter:
    w = a.begin(rel, meta(data, mode))
    w.write(data[:3])
    w.write(data[3:])
    assert w.finish(blake3.blake3(data).digest() if digest is None else digest) is (digest is None)
    return w


def test_a_new_file_is_written_under_a_temp_name_and_renamed_by_the_flush(sb: Standby) -> None:
    a = sb.applier()
    w = a.begin("sub/new", meta(b"hello"))
    assert is_tmp_name(w.tmp) and os.listdir(sb.root / "sub") == [w.tmp]  # in its final directory
    w.write(b"hello")
    assert w.finish(blake3.blake3(b"hello").digest())
    assert not (sb.root / "sub" / "new").exists()  # not visible before the flush
    assert a.flush() == []
    a.finish()
    a.close()
    assert (sb.root / "sub" / "new").read_bytes() == b"hello"
    st = os.stat(sb.root / "sub" / "new")
    assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o644, MTIME)
    e = sb.tree.get("sub/new")
    assert e is not None and e.digest == blake3.blake3(b"hello").digest() and e.ctime_ns == st.st_ctime_ns
    assert sb.temps() == [] and sb.backed_up() == {}


def test_a_replaced_file_keeps_its_old_version_in_the_backup_set(sb: Standby) -> None:
    (sb.root / "f").write_bytes(b"old")
    a = sb.applier()
    write(a, "f", b"new content")
    assert (sb.root / "f").read_bytes() == b"old"
    assert a.flush() == []
    a.close()
    assert (sb.root / "f").read_bytes() == b"new content"
    assert sb.backed_up() == {"data/f": b"old"}


def test_a_directory_replaced_by_a_file_goes_to_the_backup_set_whole(sb: Standby) -> None:
    (sb.root / "x" / "deep").mkdir(parents=True)
    (sb.root / "x" / "deep" / "f").write_bytes(b"inside")
    a = sb.applier()
    write(a, "x", b"now a file")
    assert a.flush() == []
    a.close()
    assert (sb.root / "x").read_bytes() == b"now a file"
    assert sb.backed_up() == {"data/x/deep/f": b"inside"}


def test_a_file_replaced_by_a_directory(sb: Standby) -> None:
    (sb.root / "x").write_bytes(b"was a file")
    a = sb.applier()
    a.make_dir("x", Entry(DIR, 0o750, mtime_ns=MTIME))
    a.finish()
    a.close()
    assert (sb.root / "x").is_dir() and os.stat(sb.root / "x").st_mode & 0o7777 == 0o750
    assert sb.backed_up() == {"data/x": b"was a file"}
    assert sb.tree.get("x") is not None and sb.tree.get("x").kind == DIR  # type: ignore[union-attr]


def test_a_symlink_is_made_and_replaces_a_file_it_backs_up(sb: Standby) -> None:
    (sb.root / "l").write_bytes(b"file first")
    a = sb.applier()
    a.make_link("l", Entry(LINK, 0o777, 5, MTIME, link="../target"))
    a.make_link("sub/l2", Entry(LINK, 0o777, 1, MTIME, link="t"))
    a.close()
    assert os.readlink(sb.root / "l") == "../target" and os.readlink(sb.root / "sub" / "l2") == "t"
    assert sb.backed_up() == {"data/l": b"file first"}
    e = sb.tree.get("l")
    assert e is not None and e.kind == LINK and e.link == "../target"
    assert sb.temps() == []


def test_a_file_is_never_written_through_a_symlinked_parent(sb: Standby, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (sb.root / "sub").symlink_to(outside)
    a = sb.applier()
    with pytest.raises(PathRefused):
        a.begin("sub/f", meta(b"x"))
    a.close()
    assert os.listdir(outside) == []


def test_a_file_that_does_not_match_its_digest_leaves_the_old_file(sb: Standby) -> None:
    (sb.root / "f").write_bytes(b"old")
    a = sb.applier()
    write(a, "f", b"new", digest=b"\0" * 32)  # finish says False
    w = a.begin("h", meta(b"longer than sent"))
    w.write(b"short")
    assert not w.finish(blake3.blake3(b"short").digest())  # the size differs from the header's
    assert a.flush() == []
    a.close()
    assert (sb.root / "f").read_bytes() == b"old" and not (sb.root / "h").exists()
    assert sb.temps() == [] and sb.backed_up() == {}


def test_a_failed_write_is_kept_and_the_old_file_stays(sb: Standby) -> None:
    (sb.root / "f").write_bytes(b"old")
    a = sb.applier()
    w = a.begin("f", meta(b"new"))
    os.close(w.fd)  # the disk goes away under the writer
    w.write(b"new")
    assert isinstance(w.error, OSError) and w.error.errno == errno.EBADF
    w.write(b"more")  # later writes are dropped
    w.fd = -1
    w.abort()
    a.close()
    assert (sb.root / "f").read_bytes() == b"old" and sb.temps() == []


def test_a_rename_that_fails_leaves_the_old_file_and_reports_it(sb: Standby) -> None:
    (sb.root / "a").write_bytes(b"old a")
    a = sb.applier()
    write(a, "a", b"new a")
    w = write(a, "b", b"new b")
    os.unlink(w.tmp, dir_fd=a.fds.get(""))  # its temp file is gone before the rename
    failed = a.flush()
    a.close()
    assert [(p.rel, e.errno) for p, e in failed] == [("b", errno.ENOENT)]
    assert (sb.root / "a").read_bytes() == b"new a" and not (sb.root / "b").exists()
    assert sb.tree.get("b") is None


def test_close_removes_the_temps_of_a_batch_not_flushed(sb: Standby) -> None:
    a = sb.applier()
    write(a, "a", b"aaa")
    w = a.begin("b", meta(b"bbb"))
    w.write(b"b")
    w.abort()
    assert sb.temps() != []
    a.close()
    assert sb.temps() == [] and os.listdir(sb.root) == []


def test_flush_behind_renames_each_batch_in_order_and_reports_failures(sb: Standby) -> None:
    async def run() -> list[tuple[str, int, int]]:
        failed: list[tuple[str, int, int]] = []
        a = sb.applier()
        try:
            write(a, "one", b"1")
            assert not a.batch_full(max_files=2, max_bytes=100)
            write(a, "two", b"22")
            assert a.batch_full(max_files=2, max_bytes=100)
            a.flush_behind(lambda rel, size, exc: failed.append((rel, size, exc.errno or 0)))
            assert not a.batch_full(max_files=2, max_bytes=100)  # a new batch started
            w = write(a, "three", b"333")
            os.unlink(w.tmp, dir_fd=a.fds.get(""))
            a.flush_behind(lambda rel, size, exc: failed.append((rel, size, exc.errno or 0)))
            await a.flushed()
        finally:
            await a.aclose()
        return failed

    assert asyncio.run(run()) == [("three", 3, errno.ENOENT)]
    assert sorted(os.listdir(sb.root)) == ["one", "two"]


def test_a_deletion_moves_the_path_to_the_backup_set(sb: Standby) -> None:
    (sb.root / "d").mkdir()
    (sb.root / "d" / "f").write_bytes(b"f")
    sb.tree.put("d", Entry(DIR, 0o755))
    sb.tree.put("d/f", Entry(FILE, 0o644, 1))
    a = sb.applier()
    a.delete("d/f")
    a.delete("d")
    a.delete("never-there")
    a.close()
    assert os.listdir(sb.root) == [] and sb.tree.get("d") is None
    assert sb.backed_up() == {"data/d/f": b"f"}


# -- Failures -----------------------------------------------------------------------------------------
def test_failures_take_the_cause_of_the_errno() -> None:
    f = Failures()
    f.failed("data", "full", OSError(errno.ENOSPC, "No space left on device"), 123)
    f.failed("data", "ro", PermissionError(errno.EACCES, "Permission denied"))
    f.failed("data", "bad", PathRefused("'bad': a parent is not a real directory"))
    assert not f.guard("data", "g", os.unlink, "/nonexistent/hasync/x")
    assert f.guard("data", "fine", lambda: None)
    got = {k[1]: (e.cause, e.message, e.size) for k, e in f.errors.items()}
    assert got == {
        "full": (Cause.DISK_FULL, "No space left on device (on the standby)", 123),
        "ro": (Cause.PERMISSION_DENIED, "Permission denied (on the standby)", 0),
        "bad": (Cause.SYNC_ERROR, "path refused: 'bad': a parent is not a real directory", 0),
        "g": (Cause.SYNC_ERROR, "No such file or directory (on the standby)", 0),
    }


def test_a_refusal_already_reported_is_not_logged_again(caplog: pytest.LogCaptureFixture) -> None:
    first = Failures()
    first.refused("data", "dir", b"name\0x", ValueError("bad kind"))
    (err,) = first.errors.values()
    assert (err.path, err.cause, err.message) == (
        "dir/name\\0x",
        Cause.SYNC_ERROR,
        "refused: malformed entry: bad kind",
    )
    caplog.clear()
    with caplog.at_level(logging.ERROR, "hasync.standby"):
        again = Failures(first.errors)
        again.refused("data", "dir", b"name\0x", ValueError("bad kind"))
        assert caplog.records == []
        again.refused("data", "dir", b"name\0x", ValueError("another reason"))
        assert len(caplog.records) == 1


def test_a_directory_it_makes_is_handed_to_the_watcher_before_anything_is_put_in_it(sb: Standby) -> None:
    seen: list[tuple[str, list[str]]] = []
    a = Applier(
        sb.d,
        sb.tree,
        sb.backups,
        as_root=False,
        fsync_each=False,
        on_dir=lambda rel: seen.append((rel, os.listdir(sb.root / rel))),
    )
    a.make_dir("conf", Entry(DIR, 0o755, mtime_ns=MTIME))
    a.make_dir("conf/sub", Entry(DIR, 0o755, mtime_ns=MTIME))
    write(a, "conf/sub/a.yaml", b"key: value\n")
    assert a.flush() == []
    a.finish()
    a.close()
    assert seen == [("conf", []), ("conf/sub", [])]  # each watched while still empty
    assert (sb.root / "conf" / "sub" / "a.yaml").read_bytes() == b"key: value\n"
