"""The file watcher: one inotify instance per sync dir, one watch per real directory.

A thin layer over `inotify_simple` (a ctypes wrapper of the three inotify calls):

- Names are bytes on Linux. They are kept as `str` decoded with `os.fsdecode`
  (surrogateescape), which `os.fsencode` turns back into the exact bytes, so a
  name that is not UTF-8 is watched, reported and synchronized like any other.
- A watch is added to each real directory, never through a symlink
  (`IN_DONT_FOLLOW`, `IN_ONLYDIR`; the walk that adds them never descends into a
  link). Only the sync dir's root may be a configured symlink, and is followed.
- Watches are added by the scan, each one just before its directory is listed
  (`watch`), so that a change made while or after it is listed is an event.
- `IN_Q_OVERFLOW` (the kernel's queue was full, events were lost) is reported
  as `Batch.overflow`; with one instance per sync dir, the rescan it calls for
  is limited to that sync dir.
- A directory that cannot be watched (`ENOSPC`: `fs.inotify.max_user_watches`
  reached) is kept in `unwatched`, which the side polls; the fault is `health()`.
- A failure of the instance itself (read error, instance limit) marks it
  `failed`: every known directory becomes polled until the side reopens it
  (`reopen`, with a backoff) and rescans the sync dir.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from inotify_simple import INotify, flags

from hasync.fsutil import is_tmp_name
from hasync.halog import kv
from hasync.tasks import Backoff

log = logging.getLogger("hasync.watcher")

_EVENTS = (
    flags.MODIFY
    | flags.ATTRIB
    | flags.CLOSE_WRITE
    | flags.MOVED_FROM
    | flags.MOVED_TO
    | flags.CREATE
    | flags.DELETE
    | flags.DELETE_SELF
    | flags.MOVE_SELF
)
DIR_MASK = _EVENTS | flags.ONLYDIR | flags.DONT_FOLLOW | flags.EXCL_UNLINK
ROOT_MASK = _EVENTS | flags.ONLYDIR | flags.EXCL_UNLINK  # a root configured through a symlink is followed

QUIET_S = 0.005  # a batch is handed on once no event came for this long...
MAX_BATCH_S = 0.2  # ...or once its first event is this old
BACKOFF_S = (1.0, 60.0)  # first and longest wait before a failed instance is reopened
MAX_OWN_MOVES = 10_000  # rename halves awaiting their MOVED_TO
STABLE_S = 600.0  # a failure this long after the last one waits the shortest backoff again


@dataclass
class Batch:
    """What the events of one burst say about one sync dir."""

    paths: set[str] = field(default_factory=set)  # relative paths to look at again ("" = the root)
    overflow: bool = False  # events were lost: rescan the sync dir
    root_moved: bool = False  # the root itself was moved or deleted

    def __bool__(self) -> bool:
        return bool(self.paths or self.overflow or self.root_moved)


Sink = Callable[[Batch], Awaitable[None]]


class DirWatcher:
    """The inotify instance of one sync dir and its watches (reldir <-> watch descriptor)."""

    def __init__(self, name: str, root: Path, sink: Sink) -> None:
        self.name = name
        self.root = root
        self._sink = sink
        self._lock = threading.Lock()  # watches are added from the scan's worker thread
        # Cookies of renames away from a hasync temp name: the standby's own rename into place (see _read).
        self._own_moves: set[int] = set()
        self._ino: INotify | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wd: dict[int, str] = {}
        self._rel: dict[str, int] = {}
        self.unwatched: set[str] = set()  # directories polled instead (watch limit, failed instance)
        self.overflows = 0
        self.restarts = 0
        self.error: str | None = None  # why the watcher is degraded or failed, None when ok
        self.failed = False
        self.retry_at = 0.0
        self._backoff = Backoff(*BACKOFF_S)
        self._failed_at = 0.0
        self._batch = Batch()
        self._first = 0.0
        self._last = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------
    def open(self) -> bool:
        """Create the inotify instance and start reading it; False (and `failed`) when it cannot be made."""
        self._loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"watch-{self.name}")
        with self._lock:
            try:
                ino = INotify(nonblocking=True)
            except OSError as exc:
                self._fail_locked(f"cannot create an inotify instance: {exc.strerror} (fs.inotify.max_user_instances)")
                return False
            self._ino = ino
            self.failed = False
        self._loop.add_reader(ino.fileno(), self._readable)
        return True

    def reopen(self) -> bool:
        """After a failure: a new instance (the caller rescans the sync dir, which adds the watches)."""
        self.restarts += 1
        return self.open()

    def close(self) -> None:
        with self._lock:
            ino, self._ino = self._ino, None
            self._wd.clear()
            self._rel.clear()
        if ino is not None:
            if self._loop is not None:
                self._loop.remove_reader(ino.fileno())
            ino.close()
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _fail_locked(self, why: str) -> None:
        """The instance is unusable: poll every directory it watched until it is reopened."""
        if not self.failed:
            log.error("file watcher failed, polling instead %s", kv(dir=self.name, error=why))
        now = time.monotonic()
        if now - self._failed_at > STABLE_S:
            self._backoff.reset()
        self._failed_at = now
        self.failed = True
        self.error = why
        self.unwatched.update(self._rel)
        self.unwatched.add("")
        self._wd.clear()
        self._rel.clear()
        self.retry_at = now + self._backoff.next()

    def _fail(self, why: str) -> None:
        with self._lock:
            ino, self._ino = self._ino, None
            self._fail_locked(why)
        if ino is not None:
            if self._loop is not None:
                self._loop.remove_reader(ino.fileno())
            ino.close()
        self._batch.overflow = True  # whatever happened meanwhile is unknown
        self._wake.set()

    # -- watches -------------------------------------------------------------
    def watch(self, rel: str) -> None:
        """Watch directory `rel` (just before it is listed). Thread-safe."""
        path = os.fsencode(self.root / rel if rel else self.root)
        with self._lock:
            ino = self._ino
            if ino is None:
                self.unwatched.add(rel)
                return
            try:
                wd = ino.add_watch(path, DIR_MASK if rel else ROOT_MASK)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES, errno.EPERM):
                    # Gone, or not a directory any more: its parent's event tells. Unreadable: the scan
                    # reports it (permission_denied), and the chmod that fixes it is an event of its parent.
                    return
                if exc.errno == errno.ENOSPC:
                    why = "inotify watch limit reached (fs.inotify.max_user_watches); polling the rest"
                else:
                    why = f"cannot watch {rel or '/'}: {exc.strerror}"
                if self.error is None:
                    log.warning("file watcher degraded %s", kv(dir=self.name, path=rel or "/", error=why))
                self.error = why
                self.unwatched.add(rel)
                return
            old = self._rel.get(rel)
            if old is not None and old != wd:  # rel is another directory now (a swap): drop the old one's watch
                self._wd.pop(old, None)
                try:
                    ino.rm_watch(old)
                except OSError:
                    pass
            moved = self._wd.get(wd)
            if moved is not None and moved != rel and self._rel.get(moved) == wd:
                del self._rel[moved]  # the same directory under a new name (a rename)
            self._wd[wd] = rel
            self._rel[rel] = wd
            if self.unwatched:
                self.unwatched.discard(rel)
                self._recovered_locked()

    def _recovered_locked(self) -> None:
        if not self.unwatched and not self.failed and self.error is not None:
            log.info("file watcher recovered %s", kv(dir=self.name, watches=len(self._rel)))
            self.error = None

    def forget(self, top: str, keep: set[str] | None = None) -> None:
        """Remove the watches of `top` and below (moved away), or of those not in `keep` (after a scan)."""
        prefix = top + "/" if top else ""
        with self._lock:
            self._drop([r for r in self._rel if (r == top or r.startswith(prefix)) and (keep is None or r not in keep)])
            self.unwatched -= {
                r for r in self.unwatched if (r == top or r.startswith(prefix)) and (keep is None or r not in keep)
            }
            self._recovered_locked()

    def watched(self) -> int:
        return len(self._rel)

    def covers(self, rel: str) -> bool:
        """Whether directory `rel` is watched or polled (False: nobody looks at it yet)."""
        return self.failed or rel in self._rel or rel in self.unwatched

    # -- events --------------------------------------------------------------
    def _readable(self) -> None:
        ino = self._ino
        if ino is None:
            return
        try:
            events = ino.read(timeout=0)
        except OSError as exc:
            self._fail(f"reading inotify events failed: {exc.strerror}")
            return
        b = self._batch
        with self._lock:
            for ev in events:
                mask = ev.mask
                if mask & flags.Q_OVERFLOW:
                    if not b.overflow:
                        log.warning("inotify queue overflowed, rescanning %s", kv(dir=self.name))
                    b.overflow = True
                    self.overflows += 1
                    continue
                if mask & flags.IGNORED:  # the directory is gone, or we removed the watch
                    rel = self._wd.pop(ev.wd, None)
                    if rel is not None and self._rel.get(rel) == ev.wd:
                        del self._rel[rel]
                    continue
                reldir = self._wd.get(ev.wd)
                if reldir is None:
                    continue  # a watch removed meanwhile
                if not ev.name:  # the watched directory itself
                    if reldir == "" and mask & (flags.MOVE_SELF | flags.DELETE_SELF):
                        b.root_moved = True
                    b.paths.add(reldir)
                    continue
                if is_tmp_name(ev.name):
                    # hasync's own temp files are never synchronized: nothing to look at. Renamed away, it is
                    # the standby placing a file it wrote and recorded (apply.py): the rename's other half,
                    # the final name's MOVED_TO, is no change either. Any later write gives its own event.
                    if mask & flags.MOVED_FROM:
                        if len(self._own_moves) >= MAX_OWN_MOVES:  # halves that never came (moved out of view)
                            self._own_moves.clear()
                        self._own_moves.add(ev.cookie)
                    continue
                if mask & flags.MOVED_TO and ev.cookie in self._own_moves:
                    self._own_moves.discard(ev.cookie)
                    continue
                rel = f"{reldir}/{ev.name}" if reldir else ev.name
                b.paths.add(rel)
                if mask & flags.ISDIR and mask & flags.MOVED_FROM and rel in self._rel:
                    self._forget_moved(rel)
        if b:
            now = time.monotonic()
            if not self._first:
                self._first = now
            self._last = now
            self._wake.set()

    def _forget_moved(self, top: str) -> None:
        """A watched directory was renamed away (lock held): its watches' paths are stale."""
        prefix = top + "/"
        self._drop([r for r in self._rel if r == top or r.startswith(prefix)])

    def _drop(self, rels: list[str]) -> None:
        """Remove the watches of these watched directories (lock held)."""
        for r in rels:
            wd = self._rel.pop(r)
            self._wd.pop(wd, None)
            if self._ino is not None:
                try:
                    self._ino.rm_watch(wd)
                except OSError:
                    pass

    async def _run(self) -> None:
        """Hand each burst of events to the sink, one batch at a time."""
        while True:
            await self._wake.wait()
            # Group a burst: wait until no event came for QUIET_S, at most MAX_BATCH_S after the first.
            while True:
                now = time.monotonic()
                quiet_at = self._last + QUIET_S
                if now >= quiet_at or now >= self._first + MAX_BATCH_S:
                    break
                await asyncio.sleep(min(quiet_at, self._first + MAX_BATCH_S) - now)
            self._wake.clear()
            batch, self._batch = self._batch, Batch()
            self._first = self._last = 0.0
            if not batch:
                continue
            try:
                await self._sink(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # the sink's bug must not stop the watcher: rescan, and go on
                log.exception("handling file events failed %s", kv(dir=self.name))
                self._batch.overflow = True
                self._wake.set()
                await asyncio.sleep(1.0)
