"""Applying changes on the standby: atomic per file, batch-flushed, backed up, path-safe; and the
failures of a run, one FileError per path with the spec's cause."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass
from typing import Any

import blake3

from hasync import clock
from hasync.backup import BackupSets
from hasync.config import SyncDir
from hasync.errors import Cause, HasyncError, PathRefused, cause_of_oserror
from hasync.fsutil import DirFds, fsync_fd, set_meta_at, syncfs, tmp_name
from hasync.halog import kv
from hasync.manifest import DIR, FILE, LINK, Entry, Tree

log = logging.getLogger("hasync.standby")


@dataclass(frozen=True)
class FileError:
    """A path the standby could not bring in sync, with the spec's cause."""

    dir: str
    path: str
    cause: Cause
    message: str
    since: float
    size: int = 0  # bytes the path needs on the standby, when known (for disk_full)

    def as_json(self) -> dict[str, Any]:
        return {
            "dir": self.dir,
            "path": self.path,
            "cause": self.cause.value,
            "reason": self.message,
            "size": self.size,
        }


ErrorKey = tuple[str, str]  # (sync dir, path)


class Failures:
    """What one run of the standby's writer (a reconcile, a batch of changes) could not bring in sync,
    one FileError per (dir, path). `reported`: the errors known before the run, so that a refusal
    seen again is not logged again."""

    def __init__(self, reported: Mapping[ErrorKey, FileError] | None = None) -> None:
        self.reported: Mapping[ErrorKey, FileError] = {} if reported is None else reported
        self.errors: dict[ErrorKey, FileError] = {}

    def fail(self, dir_name: str, rel: str, cause: Cause, msg: str, size: int = 0) -> None:
        self.errors[(dir_name, rel)] = FileError(dir_name, rel, cause, msg, clock.now(), size)

    def failed(self, dir_name: str, rel: str, exc: OSError | PathRefused, size: int = 0) -> None:
        """A file operation on the standby failed: its cause from the errno; a path refused is sync_error."""
        if isinstance(exc, PathRefused):
            log.error("path refused %s", kv(dir=dir_name, path=rel, error=exc.message))
            self.fail(dir_name, rel, Cause.SYNC_ERROR, f"path refused: {exc.message}")
        else:
            self.fail(dir_name, rel, cause_of_oserror(exc), f"{exc.strerror or exc} (on the standby)", size)

    def guard(self, dir_name: str, rel: str, fn: Callable[..., object], *args: Any) -> bool:
        """`fn(*args)`; False, with the path's failure recorded, when it raised OSError or PathRefused."""
        try:
            fn(*args)
            return True
        except (OSError, PathRefused) as exc:
            self.failed(dir_name, rel, exc)
        return False

    def refused(self, dir_name: str, reldir: str, raw: object, exc: Exception) -> None:
        """Data from the active refused (a bad name, entry or frame): sync_error for the path it names."""
        what = exc.message if isinstance(exc, HasyncError) else f"malformed entry: {exc}"
        name = os.fsdecode(raw) if isinstance(raw, bytes) else repr(raw)[:80]
        key = f"{reldir}/{name}".lstrip("/").replace("\0", "\\0")
        known = self.reported.get((dir_name, key))
        if known is None or known.message != f"refused: {what}":  # a new refusal, not its repetition
            log.error(
                "refused data from the active %s",
                kv(dir=dir_name, where=reldir or "/", entry=repr(raw)[:80], error=what),
            )
        self.fail(dir_name, key, Cause.SYNC_ERROR, f"refused: {what}")


@dataclass
class Resume:
    """Where a resumed transfer goes on: the partial temp file, its length, the hasher of its bytes."""

    tmp: str
    offset: int
    hasher: blake3.blake3


@dataclass
class _Pending:
    rel: str
    parent: str
    tmp: str
    entry: Entry


class FileWriter:
    """One incoming file, written to a temp name in its final directory."""

    def __init__(self, applier: Applier, rel: str, meta: Entry, resume: Resume | None = None) -> None:
        """A new temp file; or, with `resume`, the partial temp file of an earlier transfer, cut back
        to the offset the active agreed to send from, with the hasher of those bytes."""
        self.applier = applier
        self.rel = rel
        self.meta = meta
        self.parent, _, self.name = rel.rpartition("/")
        self.pfd = applier.parent_fd(self.parent)
        self.error: OSError | None = None  # the first write that failed; later writes are dropped
        if resume is None:
            self.tmp = tmp_name()
            self.fd = os.open(
                self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600, dir_fd=self.pfd
            )
            self.hasher = blake3.blake3()
            self.size = self.start = 0
            return
        self.tmp = resume.tmp
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=self.pfd)
        try:
            os.ftruncate(self.fd, resume.offset)
            os.lseek(self.fd, resume.offset, os.SEEK_SET)
        except BaseException:
            self.abort()
            raise
        self.hasher = resume.hasher
        self.size = self.start = resume.offset  # start: the bytes this transfer did not receive

    def keep(self) -> None:
        """Close the temp file and leave it for a later resume (its record says what it holds)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def write(self, data: bytes) -> None:
        """Append `data` (in the WritePipe's thread, or inline); a failure is kept in `error`."""
        if self.error is not None:
            return
        try:
            self.hasher.update(data)
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except OSError as exc:
            self.error = exc
            return
        self.size += len(data)

    def finish(self, digest: bytes) -> bool:
        """Close the temp file with the active's metadata; False (temp removed) if it is not what was sent."""
        try:
            if self.hasher.digest() != digest or self.size != self.meta.size:
                self.abort()
                return False
            m = self.meta
            if self.applier.as_root:
                os.fchown(self.fd, m.uid, m.gid)
            os.fchmod(self.fd, m.mode)
            os.utime(self.fd, ns=(m.mtime_ns, m.mtime_ns))
            if self.applier.fsync_each:
                fsync_fd(self.fd)
            st = os.fstat(self.fd)
        except BaseException:
            self.abort()
            raise
        os.close(self.fd)
        self.fd = -1
        # Our own write: nobody else has touched it yet, so its digest is trusted by inode.
        ino = st.st_ino
        entry = m._replace(digest=digest, ino=ino, uid=st.st_uid, gid=st.st_gid)
        self.applier._written(_Pending(self.rel, self.parent, self.tmp, entry), self.size)
        return True

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.tmp, dir_fd=self.pfd)
        except FileNotFoundError:
            pass


class WritePipe:
    """Incoming file data, written in order by one worker thread.

    The event loop receives the next bytes from the network while the last ones
    are hashed and written (both release the GIL), which is what lets the two
    cores share a transfer. At most `limit` bytes wait in the queue (`put` waits
    for room). Before a writer is finished or aborted, its queued writes must be
    done: `drain()` on the loop, `settle()` (blocking) on error paths; the fd is
    never closed under a pending write.
    """

    def __init__(self, executor: Executor, limit: int = 16 << 20, inline_below: int = 256 << 10) -> None:
        self._executor = executor
        self.limit = limit
        self.inline_below = inline_below
        self._queue: deque[tuple[Future[None], int]] = deque()
        self._bytes = 0

    async def put(self, writer: FileWriter, data: bytes) -> None:
        if len(data) < self.inline_below and not self._queue:
            writer.write(data)  # a small file's one chunk: a thread hand-off would cost more than it saves
            return
        self._queue.append((self._executor.submit(writer.write, data), len(data)))
        self._bytes += len(data)
        while self._bytes > self.limit:
            await self._pop()

    async def _pop(self) -> None:
        fut, n = self._queue[0]
        await asyncio.wrap_future(fut)
        self._queue.popleft()
        self._bytes -= n

    async def drain(self) -> None:
        """Wait until every queued write is done."""
        while self._queue:
            await self._pop()

    def settle(self) -> None:
        """Wait (blocking) until no queued write can still run: for error and cancellation paths."""
        wait([f for f, _ in self._queue])
        self._queue.clear()
        self._bytes = 0


class Applier:
    """Writes one sync dir of the standby. Every operation goes through verified dir fds.

    Files are written to temp names; `flush` makes the batch durable (one
    `syncfs`, or an fsync per file for tiny batches), keeps the old versions
    in the backup set, renames, and fsyncs the directories. A crash at any
    point leaves every name with its old or its new content; the temp files
    are removed at the next start. The standby flushes behind (`flush_behind`):
    a written batch is made durable and renamed in a worker thread while the
    next one is received.

    Its state (the written batch, the flush in progress, the tree) changes only
    through its methods.
    """

    def __init__(
        self,
        d: SyncDir,
        tree: Tree,
        backups: BackupSets,
        as_root: bool,
        fsync_each: bool,
        on_dir: Callable[[str], None] | None = None,
    ) -> None:
        self.d = d
        # Called with each directory this side makes, before anything is put in it: the watcher watches it
        # from the start, so its own mkdir event is no "directory nobody watches" that would be rescanned
        # (and its just-written, racy files hashed again: 100,000 files cost ~50 MiB of peak memory).
        self.on_dir = on_dir
        self.tree = tree
        self.backups = backups
        self.as_root = as_root
        self.fsync_each = fsync_each
        self.fds = DirFds(d.path)
        self.root_fd = self.fds.get("")
        self._pending: list[_Pending] = []  # written, not yet renamed into place
        self._pending_bytes = 0
        self._flushing: asyncio.Task[None] | None = None  # the batch being made durable (flush_behind)
        self._dir_modes: dict[str, Entry] = {}
        self._opened: dict[str, int] = {}  # dirs given u+rwx for the batch: original mode

    def close(self) -> None:
        """Remove the temp files of the batch not renamed into place, restore the dir modes, close the fds."""
        for p in self._pending:
            try:
                os.unlink(p.tmp, dir_fd=self.fds.get(p.parent))
            except OSError:
                pass
        self._pending.clear()
        self._restore_modes()
        self.fds.close()

    async def aclose(self) -> None:
        """Stop the flush in progress (cancelled or failed: its files are left out) and close."""
        if self._flushing is not None:
            self._flushing.cancel()
            try:
                await self._flushing
            except (asyncio.CancelledError, Exception):
                pass
            self._flushing = None
        self.close()

    # -- helpers -----------------------------------------------------------
    def parent_fd(self, parent: str) -> int:
        """Fd of `parent`, created if missing, writable for the batch if we own it."""
        fd = self.fds.get(parent, create=True)
        if not self.as_root and parent not in self._opened:
            st = os.fstat(fd)
            if st.st_mode & 0o700 != 0o700 and st.st_uid == os.geteuid():
                self._opened[parent] = stat.S_IMODE(st.st_mode)
                os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o700)
        return fd

    def _restore_modes(self) -> None:
        for rel, mode in sorted(self._opened.items(), key=lambda kv: -kv[0].count("/")):
            if rel in self._dir_modes:
                continue
            try:
                os.fchmod(self.fds.get(rel), mode)
            except OSError:
                pass
        self._opened.clear()

    def sync_all(self) -> None:
        """One syncfs for everything this applier renamed, created and removed (thread-safe)."""
        syncfs(self.root_fd)

    def _lstat(self, rel: str) -> os.stat_result | None:
        parent, _, name = rel.rpartition("/")
        try:
            return os.stat(name, dir_fd=self.fds.get(parent), follow_symlinks=False)
        except FileNotFoundError:
            return None

    # -- operations --------------------------------------------------------
    def delete(self, rel: str) -> None:
        parent, _, name = rel.rpartition("/")
        try:
            pfd = self.parent_fd(parent) if parent == "" or self._lstat(parent) else None
        except FileNotFoundError:
            pfd = None
        if pfd is None or self._lstat(rel) is None:
            self.tree.remove(rel)
            return
        self.fds.forget(rel)
        self.backups.keep(self.d.name, rel, pfd, name, move=True)
        if self.fsync_each:
            os.fsync(pfd)
        self.tree.remove(rel)

    def make_dir(self, rel: str, e: Entry) -> None:
        parent, _, name = rel.rpartition("/")
        pfd = self.parent_fd(parent)
        st = self._lstat(rel)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            self.delete(rel)
            st = None
        if st is None:
            os.mkdir(name, 0o700, dir_fd=pfd)
        fd = self.fds.get(rel)
        if self.on_dir is not None:
            self.on_dir(rel)
        self._dir_modes[rel] = e
        self.tree.put(rel, e._replace(ino=os.fstat(fd).st_ino))

    def make_link(self, rel: str, e: Entry) -> None:
        parent, _, name = rel.rpartition("/")
        pfd = self.parent_fd(parent)
        tmp = tmp_name()
        os.symlink(e.link, tmp, dir_fd=pfd)
        try:
            if self.as_root:
                os.chown(tmp, e.uid, e.gid, dir_fd=pfd, follow_symlinks=False)
            st = self._lstat(rel)
            if st is not None:
                if stat.S_ISDIR(st.st_mode):
                    self.delete(rel)
                else:
                    self.backups.keep(self.d.name, rel, pfd, name, move=False)
            os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=pfd)
            except OSError:
                pass
            raise
        if self.fsync_each:
            os.fsync(pfd)
        st2 = self._lstat(rel)
        self.tree.put(rel, e._replace(uid=st2.st_uid if st2 else e.uid, gid=st2.st_gid if st2 else e.gid))

    def chmod(self, rel: str, e: Entry) -> None:
        if e.kind == DIR:
            self.fds.get(rel)
            self._dir_modes[rel] = e
            have = self.tree.get(rel)
            self.tree.put(rel, e._replace(ino=have.ino if have else 0))
            return
        parent, _, name = rel.rpartition("/")
        pfd = self.parent_fd(parent)
        have = self.tree.get(rel)
        if have is None:
            raise FileNotFoundError(errno.ENOENT, "changed on the standby during the sync", rel)
        try:
            # Through an O_PATH|O_NOFOLLOW fd: a symlink swapped in since the scan is never followed.
            st = set_meta_at(pfd, name, e.mode, (e.uid, e.gid) if self.as_root else None)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ELOOP):
                raise FileNotFoundError(errno.ENOENT, "changed on the standby during the sync", rel) from exc
            raise
        self.tree.put(rel, have._replace(mode=e.mode, uid=st.st_uid, gid=st.st_gid))

    def begin(self, rel: str, meta: Entry, resume: Resume | None = None) -> FileWriter:
        return FileWriter(self, rel, meta, resume)

    def _written(self, p: _Pending, size: int) -> None:
        """A finished file (FileWriter.finish), waiting in the batch to be renamed into place."""
        self._pending.append(p)
        self._pending_bytes += size

    def batch_full(self, max_files: int, max_bytes: int) -> bool:
        """Whether the written batch holds more than `max_bytes` or at least `max_files` files."""
        return self._pending_bytes > max_bytes or len(self._pending) >= max_files

    def take(self) -> list[_Pending]:
        """The written batch, handed over for `make_durable` then `commit`; a new batch starts."""
        batch, self._pending = self._pending, []
        self._pending_bytes = 0
        return batch

    def flush_behind(self, failed: Callable[[str, int, OSError], None]) -> None:
        """Make the written batch durable (syncfs in a worker thread) and rename it into place, after the
        batch before it, while the caller receives the next: the disk flush overlaps the network and the
        writes. A file that cannot be made durable or renamed is reported to `failed(rel, size, error)`."""
        batch = self.take()
        if not batch:
            return
        prev = self._flushing

        async def job() -> None:
            if prev is not None:
                await prev
            try:
                await asyncio.to_thread(self.make_durable, batch)
            except OSError as exc:
                for p in batch:
                    failed(p.rel, p.entry.size, exc)
                self._pending = batch + self._pending  # their temps are removed by close()
                return
            for p, err in self.commit(batch):
                failed(p.rel, p.entry.size, err)

        self._flushing = asyncio.create_task(job())

    async def flushed(self) -> None:
        """Wait until every batch handed to `flush_behind` is in place."""
        if self._flushing is not None:
            await self._flushing
            self._flushing = None

    def make_durable(self, batch: list[_Pending]) -> None:
        """Flush the batch's temp files to disk: one syncfs (thread-safe: touches no shared state)."""
        if batch and not self.fsync_each:
            syncfs(self.root_fd)

    def commit(self, batch: list[_Pending]) -> list[tuple[_Pending, OSError]]:
        """Keep the old versions, rename the durable temp files into place. A file that fails has its
        temp removed and is returned with its error; the others go on."""
        parents: set[str] = set()
        failed: list[tuple[_Pending, OSError]] = []
        for p in batch:
            try:
                pfd = self.fds.get(p.parent)
                name = p.rel.rpartition("/")[2]
                st = self._lstat(p.rel)
                if st is not None:
                    if stat.S_ISDIR(st.st_mode):
                        self.delete(p.rel)
                    else:
                        self.backups.keep(self.d.name, p.rel, pfd, name, move=False)
                os.rename(p.tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
                # The rename set the ctime, part of the cache key (manifest.trusted).
                placed = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            except OSError as exc:
                try:
                    os.unlink(p.tmp, dir_fd=self.fds.get(p.parent))
                except OSError:
                    pass
                failed.append((p, exc))
                continue
            parents.add(p.parent)
            same_file = placed.st_ino == p.entry.ino
            self.tree.put(p.rel, p.entry._replace(ctime_ns=placed.st_ctime_ns if same_file else 0))
        if self.fsync_each:
            # A few files: make the renames durable now. Big batches get one syncfs at the end.
            for parent in parents:
                os.fsync(self.fds.get(parent))
        return failed

    def flush(self) -> list[tuple[_Pending, OSError]]:
        """Make the written batch durable and visible (all in this thread); return the failures."""
        batch = self.take()
        self.make_durable(batch)
        return self.commit(batch)

    def finish(self) -> None:
        """Give directories their final modes, deepest first (a read-only dir last)."""
        for rel, e in sorted(self._dir_modes.items(), key=lambda kv: -kv[0].count("/")):
            try:
                fd = self.fds.get(rel)
            except FileNotFoundError:
                continue
            if self.as_root:
                os.fchown(fd, e.uid, e.gid)
            os.fchmod(fd, e.mode)
            self._opened.pop(rel, None)
        self._dir_modes.clear()
        self._restore_modes()


__all__ = ["FILE", "LINK", "Applier", "Failures", "FileError", "FileWriter", "Resume", "WritePipe"]
