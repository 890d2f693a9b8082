"""The active role: keeps its trees current from file-system events and serves them.

The active never writes to its sync dirs. It scans each sync dir once at
start (reusing cached digests), adding each directory's inotify watch just
before listing it (replication/watcher.py), then follows the events: each
event re-stats the path, re-hashes it if its (inode, size, mtime) changed,
and when the entry really changed it bumps the change sequence `seq` and
wakes the standby's long-poll. A queue overflow, a replaced root or a
restarted watcher rescans the sync dir; a periodic full rescan catches
anything the events missed.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
import stat
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import blake3

from hasync import clock, hashcache
from hasync.config import Config, SyncDir
from hasync.errors import Cause, PathRefused, ScanError, cause_of_oserror, unreadable_cause
from hasync.fsutil import DirFds
from hasync.halog import kv
from hasync.manifest import (
    CHUNK,
    FILE,
    Entry,
    FileChanged,
    Plan,
    Tree,
    confirm_read,
    diff,
    scan,
    stat_key,
    trusted,
)
from hasync.peer.frames import FRAME_HEADER, frame
from hasync.peer.protocol import (
    F_DATA,
    F_DONE,
    F_END,
    F_ERR,
    F_HEAD,
    enc_failed,
    enc_head,
    enc_path,
    enc_vanished,
    pack,
)
from hasync.replication.base import BIG_FILE, Side
from hasync.tasks import periodic

log = logging.getLogger("hasync.active")

MAX_LOG = 200_000
FLUSH_AT = 256 << 10


class ActiveSide(Side):
    """Serves trees, change feed and file contents to the standby."""

    role = "active"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.instance = secrets.token_hex(8)
        self.seq = 0
        self._log: deque[tuple[int, str, str, float]] = deque()
        self._floor = 0  # changes at or below this seq are no longer in the log
        self._wake = asyncio.Event()
        self._rescan_lock = asyncio.Lock()
        self._stale: set[asyncio.Task[None]] = set()  # refreshes of entries a transfer found stale
        # A switchover's freeze (`freeze`): until then, file-system events are held, not recorded.
        self.frozen_until: float | None = None
        self._held: set[str] = set()
        self._thaw: asyncio.TimerHandle | None = None
        self._adopted: dict[str, Tree] = {}  # the replaced standby's trees, the first scan's cache (`adopt`)

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        self._open_watchers()  # before the scan: a change made while it runs is an event
        await self.rescan_all(initial=True)
        self._tasks.append(asyncio.create_task(self._periodic_rescan(), name="rescan"))
        self._tasks.append(asyncio.create_task(self._periodic_save(), name="save-cache"))
        self._start_root_poll()

    async def prepare(self) -> None:
        await self.rescan_all(initial=True)

    async def stop(self) -> None:
        if self._thaw is not None:  # a node that stops (or becomes standby) drops what it held
            self._thaw.cancel()
        await super().stop()

    async def _periodic_rescan(self) -> None:
        await periodic(self.rescan_all, self.cfg.sync.full_reconcile_s, self._stop_event, log, "full rescan")

    # -- keeping the trees current ----------------------------------------
    async def rescan_all(self, initial: bool = False, only: str | None = None) -> None:
        """Full rescan of every sync dir (or of the one named `only`); record what changed since the last look."""
        if self.frozen and not initial:
            self._held.update(str(d.path) for d in self.cfg.sync.dirs if only in (None, d.name))
            return
        async with self._rescan_lock:
            touched = await self._rescan(initial, only)
        if touched:  # events that came during the scan, looked at against the new trees
            await self.refresh(touched)

    async def _rescan(self, initial: bool, only: str | None) -> set[str]:
        self._scanning = set()
        try:
            for d in self.cfg.sync.dirs:
                if only is not None and d.name != only:
                    continue
                cur = self.trees.get(d.name)
                new = await asyncio.to_thread(self._scan_dir, d, cur)
                self._prune_watches(d, new)
                if new is None:
                    if cur is not None or initial:
                        log.error("sync dir missing %s", kv(dir=d.name, path=d.path, cause=Cause.SOURCE_MISSING))
                    self.trees[d.name] = None
                    if cur is not None:
                        self._record(d.name, "")
                    continue
                for rel in new.busy:  # being written during the scan: looked at again once settled
                    self._look_again(d.path / rel)
                if cur is None:
                    self.trees[d.name] = new
                    self._record(d.name, "")
                    if not initial:
                        log.info("sync dir back %s", kv(dir=d.name, path=d.path))
                    continue
                plan = diff(new, cur)
                self.trees[d.name] = new
                for rel in [
                    *plan.fetch,
                    *(p for p, _ in plan.make),
                    *(p for p, _ in plan.chmod),
                    *plan.delete,
                    *(p for p, _ in plan.errors),
                ]:
                    self._record(d.name, rel)
                if not initial and plan:
                    log.warning(
                        "rescan found changes the events missed %s",
                        kv(dir=d.name, paths=len(self._pending_paths(plan))),
                    )
        finally:
            touched, self._scanning = self._scanning, None
        return touched

    @staticmethod
    def _pending_paths(plan: Plan) -> list[str]:
        return [*plan.fetch, *(p for p, _ in plan.make), *(p for p, _ in plan.chmod), *plan.delete]

    def adopt(self, trees: dict[str, Tree | None]) -> None:
        # A promoted standby's trees are its hash caches as it saved them when it stopped, already in memory:
        # loading the files again costs a 100,000-file tree about 0.1 s and its allocations, on the way to serving.
        self._adopted = {name: t for name, t in trees.items() if t is not None}

    def _scan_dir(self, d: SyncDir, previous: Tree | None) -> Tree | None:
        prev = previous if previous is not None else self._adopted.pop(d.name, None)
        if prev is None:
            prev = hashcache.load(self.cache_path(d.name))
        try:
            return scan(
                d.path, self.excluder, prev, self.with_owner, consume=previous is None, on_dir=self._watch_hook(d)
            )
        except FileNotFoundError:
            return None

    # -- the switchover's freeze -------------------------------------------
    @property
    def frozen(self) -> bool:
        return self.frozen_until is not None and time.monotonic() < self.frozen_until

    def freeze(self, ttl_s: float) -> None:
        """Hold every change from now for `ttl_s` at most (a switchover's last sync gets a fixed target;
        a promoter that dies half-way never leaves the active frozen): trees, seq and roots stay put,
        file-system events wait. `thaw()` records them; a node that becomes standby drops them."""
        self.frozen_until = time.monotonic() + ttl_s
        if self._thaw is not None:
            self._thaw.cancel()
        loop = asyncio.get_running_loop()
        self._thaw = loop.call_later(ttl_s, lambda: self._tasks.append(loop.create_task(self.thaw())))
        log.info("changes frozen for a switchover %s", kv(seq=self.seq, ttl_s=f"{ttl_s:g}"))

    async def thaw(self) -> None:
        if self.frozen_until is None:
            return
        self.frozen_until = None
        if self._thaw is not None:
            self._thaw.cancel()
            self._thaw = None
        held, self._held = self._held, set()
        log.info("changes thawed %s", kv(seq=self.seq, held=len(held)))
        if held:
            await self.refresh(held)

    async def refresh(self, paths: Iterable[str | Path]) -> None:
        if self.frozen:
            self._held.update(map(str, paths))
            return
        await super().refresh(paths)

    # -- the change feed ---------------------------------------------------
    async def root_changed(self, d: SyncDir) -> None:
        await self.rescan_all(only=d.name)

    def _changed(self, dir_name: str, rel: str) -> None:
        self._record(dir_name, rel)

    def _record(self, dir_name: str, rel: str) -> None:
        self.seq += 1
        self._log.append((self.seq, dir_name, rel, clock.now()))
        if len(self._log) > MAX_LOG:
            self._floor = self._log.popleft()[0]
        self._dirty.add(dir_name)
        self._wake.set()
        self._wake = asyncio.Event()

    def oldest_change_after(self, seq: int) -> float | None:
        """Time of the oldest change newer than `seq` (for lag), or None."""
        for s, _, _, t in self._log:
            if s > seq:
                return t
        return None

    async def changes(self, instance: str, since: int, timeout: float) -> dict[str, object]:
        """Changes after `since`, waiting up to `timeout` for the first one (long-poll)."""
        if instance == self.instance and since == self.seq and timeout > 0:
            wake = self._wake
            try:
                await asyncio.wait_for(wake.wait(), timeout)
            except TimeoutError:
                pass
        reset = instance != self.instance or since > self.seq or since < self._floor
        rows: list[list[object]] = []
        if not reset:
            seen: dict[tuple[str, str], None] = {}
            for s, name, rel, _ in reversed(self._log):
                if s <= since:
                    break
                seen[(name, rel)] = None
            for name, rel in reversed(list(seen)):
                tree = self.trees.get(name)
                e = tree.get(rel) if tree is not None and rel else None
                rows.append([name, enc_path(rel), None if e is None else self.enc(tree, rel, e)])
        return {
            "instance": self.instance,
            "seq": self.seq,
            "reset": reset,
            "changes": rows,
            "roots": self.roots(),
            "with_owner": self.with_owner,
        }

    # -- file contents -----------------------------------------------------
    async def stream_files(
        self, dir_name: str, paths: list[str], resume: dict[str, tuple[int, bytes]] | None = None
    ) -> AsyncIterator[bytes]:
        """Frames of the requested files (docs/protocol.md): header, data, end; or an error frame.
        `resume`: for a path the standby holds the first bytes of, their length and BLAKE3."""
        d = self.cfg.sync_dir(dir_name)
        tree = self.trees.get(dir_name)
        buf = bytearray()
        stale: list[str] = []
        with DirFds(d.path) as fds:
            for rel in paths:
                known = tree.get(rel) if tree is not None else None
                async for piece in self._file_frames(fds, rel, known, (resume or {}).get(rel), stale):
                    if len(piece) >= FLUSH_AT:  # a big data chunk goes out as it is, not copied into buf
                        if buf:
                            yield bytes(buf)
                            buf.clear()
                        yield piece
                        continue
                    buf += piece
                    if len(buf) >= FLUSH_AT:
                        yield bytes(buf)
                        buf.clear()
        buf += frame(F_DONE)
        if stale and tree is not None and tree is self.trees.get(dir_name):
            self._refresh_stale(d, tree, stale)
        yield bytes(buf)

    def _refresh_stale(self, d: SyncDir, tree: Tree, stale: list[str]) -> None:
        """Files whose bytes, read whole and unchanged, are not what our tree lists: an event was missed.
        Their cached digests are dropped and they are looked at again, so that the change feed carries
        their real entries (else the standby would fetch them again and again, and never be in sync)."""
        log.warning("tree entries found stale while sending, refreshing %s", kv(dir=d.name, paths=len(stale)))
        for rel in stale:
            e = tree.get(rel)
            if e is not None and e.kind == FILE:
                tree.put(rel, e._replace(ino=0))
        task = asyncio.create_task(self.refresh([d.path / rel for rel in stale]))
        self._stale.add(task)
        task.add_done_callback(self._stale.discard)

    async def _file_frames(
        self,
        fds: DirFds,
        rel: str,
        known: Entry | None = None,
        resume: tuple[int, bytes] | None = None,
        stale: list[str] | None = None,
    ) -> AsyncIterator[bytes]:
        """The frames of one file. When `known` (our tree's entry) is `trusted` by the file's stat, its
        digest is sent without hashing again (the standby checks the bytes against it); otherwise the
        digest is of the bytes sent, and a file changed during the read, or so recently that a write may
        have been in progress (not `settled`), is sent only when a second read agrees (else F_END says
        "changed during transfer" and the standby asks again).
        With `resume` (offset, BLAKE3 of the standby's first bytes) matching our first bytes, the data
        starts at that offset (the last field of F_HEAD); the digest in F_END is still the whole file's."""
        parent, _, name = rel.rpartition("/")
        if self._ignored(rel):
            yield frame(F_ERR, enc_failed(rel, ScanError(Cause.SYNC_ERROR, "excluded path")))
            return
        try:
            pfd = fds.get(parent)
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=pfd)
        except PathRefused as exc:
            yield frame(F_ERR, enc_failed(rel, ScanError(Cause.SYNC_ERROR, exc.message)))
            return
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                yield frame(F_ERR, enc_vanished(rel))
                return
            yield frame(F_ERR, enc_failed(rel, self._unreadable(fds, parent, name, exc)))
            return
        try:
            started = time.time_ns()
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                yield frame(F_ERR, enc_vanished(rel))
                return
            cached = trusted(known, st)
            h = None if cached else blake3.blake3()
            offset = 0
            if resume is not None and 0 < resume[0] <= st.st_size:
                prefix = await self._prefix(fd, resume[0])
                if prefix.digest() == resume[1]:
                    offset = resume[0]
                    h = None if cached else prefix
                else:
                    os.lseek(fd, 0, os.SEEK_SET)
            # Only a standby that offered a resume reads the offset field.
            head = enc_head(
                rel, st.st_mode, st.st_size, st.st_mtime_ns, st.st_uid, st.st_gid, None if resume is None else offset
            )
            yield frame(F_HEAD, head)
            sent = 0
            while True:
                chunk = os.read(fd, CHUNK)
                if not chunk:
                    break
                if h is not None:
                    h.update(chunk)
                sent += len(chunk)
                yield FRAME_HEADER.pack(F_DATA, len(chunk))
                yield chunk
                if len(chunk) == CHUNK:
                    await asyncio.sleep(0)  # let other requests through during a big file
            digest = h.digest() if h is not None else known.digest  # type: ignore[union-attr]
            # The bytes sent may be torn: a write in progress when the read began set the times first.
            changed = offset + sent != st.st_size or not await self._confirm(fd, digest, st, started, cached)
            if h is not None and not changed and stale is not None and known is not None and known.digest != digest:
                stale.append(rel)
            self.sent_files += 1
            self.sent_bytes += sent
            yield frame(F_END, pack([digest, not changed, "changed during transfer" if changed else None]))
        except OSError as exc:
            yield frame(F_END, pack([b"", False, exc.strerror or str(exc)]))
        finally:
            os.close(fd)

    @staticmethod
    def _unreadable(fds: DirFds, parent: str, name: str, exc: OSError) -> ScanError:
        """Why a file cannot be opened: the scanner's rule (errors.unreadable_cause), on its lstat."""
        message = exc.strerror or str(exc)
        try:
            st = os.stat(name, dir_fd=fds.get(parent), follow_symlinks=False)
        except OSError:
            return ScanError(cause_of_oserror(exc), message)
        return ScanError(unreadable_cause(name, st, exc), message)

    @staticmethod
    async def _confirm(fd: int, digest: bytes, st: os.stat_result, started: int, cached: bool) -> bool:
        """Whether the bytes just sent are one whole version of the file (manifest.confirm_read). With the
        cached digest the standby checks the bytes itself: the stat must only be unchanged."""
        if cached:
            return stat_key(os.fstat(fd)) == stat_key(st)
        try:
            if st.st_size > BIG_FILE:
                await asyncio.to_thread(confirm_read, fd, digest, st, started)
            else:
                confirm_read(fd, digest, st, started)
        except FileChanged:
            return False
        return True

    @staticmethod
    async def _prefix(fd: int, n: int) -> blake3.blake3:
        """BLAKE3 of the first `n` bytes of `fd`, read from its current offset (left at `n`)."""
        h = blake3.blake3()
        left = n
        while left:
            chunk = os.read(fd, min(CHUNK, left))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
            await asyncio.sleep(0)  # let other requests through
        return h

    def set_owner_mode(self, with_owner: bool) -> None:
        if with_owner != self.with_owner:
            self.with_owner = with_owner
            for tree in self.trees.values():
                if tree is not None:
                    tree.set_with_owner(with_owner)
