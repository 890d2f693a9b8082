"""The audit: re-read and hash every file at a bounded rate, report and repair what the watchers missed.

"In sync" is otherwise believed: both nodes' trees come from file-system events
and a hash cache. Like a RAID scrub, the audit walks each sync dir on disk in
the background, reads every file again (never the cache) through a leaky-bucket
limiter of `[audit] rate_mb_s`, and compares what it read with what the node's
tree says. A path that differs, is missing or is unknown to the tree, and that
did not change within the racy window (an event may still be on its way), is a
finding: a WARN line in the HA log, a counter metric, the `audit` field of
`status`, and an out-of-sync verdict at the next check. It is repaired by
refreshing the path, which never trusts the cache: on the active the change
then goes out through the change feed; on the standby the local change is
drift, and the copy is fetched again. `hasync check --deep` runs a pass now on
both nodes (POST /v1/audit), unthrottled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import blake3
from aiolimiter import AsyncLimiter

from hasync import clock
from hasync.config import AuditSection, SyncDir
from hasync.fsutil import is_tmp_name
from hasync.halog import kv
from hasync.manifest import (
    CHUNK,
    DIR,
    ERROR,
    FILE,
    LINK,
    Entry,
    FileChanged,
    confirm_read,
    error_entry,
    hash_fd,
    hash_into,
    same,
    settled,
    stat_entry,
)
from hasync.replication.base import Side
from hasync.tasks import periodic

log = logging.getLogger("hasync.audit")

MIN_COST = 4096  # bytes charged per file: a pass of many tiny files is bounded too
FIRST_PASS_MAX_S = 600.0  # the first pass after start begins within this (or interval_s, if shorter)
KEEP_FINDINGS = 100  # recent findings shown in status
DEEP_TIMEOUT_S = 3600.0  # a deep check waits this long for a node's unthrottled pass


@dataclass(frozen=True)
class Finding:
    """A path whose tree entry did not match the disk: what the watchers (and the hash cache) missed."""

    dir: str
    path: str
    what: str  # content | mode | owner | type | link | missing | new | unreadable
    node: str
    at: float

    def as_json(self) -> dict[str, Any]:
        return {"dir": self.dir, "path": self.path, "what": self.what, "node": self.node, "at": self.at}

    @property
    def reason(self) -> str:
        return f"found by the audit on {self.node} ({self.what}: the watchers had missed it); repaired"


def _what(real: Entry | None, believed: Entry | None) -> str:
    if real is None:
        return "missing"
    if believed is None:
        return "new"
    if real.kind != believed.kind:
        return "unreadable" if ERROR in (real.kind, believed.kind) else "type"
    if real.kind == FILE and real.digest != believed.digest:
        return "content"
    if real.kind == LINK and real.link != believed.link:
        return "link"
    if real.mode != believed.mode:
        return "mode"
    return "owner"


class _Limiter:
    """Bytes per second through aiolimiter's leaky bucket; None: unthrottled (an audit asked for now)."""

    def __init__(self, rate_mb_s: float | None) -> None:
        self.rate = None if rate_mb_s is None else rate_mb_s * 1e6
        self.bucket = None if self.rate is None else AsyncLimiter(self.rate, 1.0)

    @property
    def piece(self) -> int:
        """The most bytes one acquire may ask for (the bucket holds one second)."""
        return CHUNK if self.rate is None else max(1, min(CHUNK, int(self.rate)))

    async def take(self, n: int) -> None:
        if self.bucket is None:
            return
        while n > 0:
            step = min(n, self.piece)
            await self.bucket.acquire(step)
            n -= step


class Auditor:
    """One node's audit: passes over every sync dir, their progress and findings (status, metrics)."""

    def __init__(self, side: Side, cfg: AuditSection, node: str) -> None:
        self.side = side
        self.cfg = cfg
        self.node = node
        self.mismatches_total = 0
        self.passes = 0
        self.last_pass_at: float | None = None  # wall time a pass completed
        self.last_pass_s: float | None = None
        self.running = False
        self.files = 0  # in the pass in progress (or the last one)
        self.bytes = 0
        self.recent: deque[Finding] = deque(maxlen=KEEP_FINDINGS)
        self.unreported: list[Finding] = []  # not yet in a check verdict
        self._pass: asyncio.Task[list[Finding]] | None = None
        self._now_lock = asyncio.Lock()
        self._last_start: float | None = None  # monotonic time the last background pass started

    # -- scheduling ---------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Passes every `interval_s` (start to start), at `rate_mb_s`, until `stop`; the first soon after start."""
        await periodic(self._background_pass, self._until_next_pass, stop, log, "audit pass")

    def _until_next_pass(self) -> float:
        if self._last_start is None:
            return min(self.cfg.interval_s, FIRST_PASS_MAX_S)
        return max(0.0, self.cfg.interval_s - (time.monotonic() - self._last_start))

    async def _background_pass(self) -> None:
        self._last_start = time.monotonic()
        try:
            await self.run_pass(self.cfg.rate_mb_s)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            # else a pass asked for now replaced this one: it covered the tree

    async def run_now(self) -> list[Finding]:
        """A full pass now, unthrottled (`hasync check --deep`): it replaces a background pass in progress."""
        async with self._now_lock:
            if self._pass is not None and not self._pass.done():
                self._pass.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._pass
            return await self.run_pass(None)

    async def run_pass(self, rate_mb_s: float | None) -> list[Finding]:
        """One full pass at `rate_mb_s` MB/s (None: unthrottled); its findings."""
        self._pass = asyncio.create_task(self._one_pass(_Limiter(rate_mb_s)))
        return await asyncio.shield(self._pass)

    # -- one pass -----------------------------------------------------------
    async def _one_pass(self, limiter: _Limiter) -> list[Finding]:
        t0 = time.monotonic()
        self.running, self.files, self.bytes = True, 0, 0
        found: list[Finding] = []
        try:
            for d in self.side.cfg.sync.dirs:
                if self.side.trees.get(d.name) is not None:
                    await self._audit_dir(d, limiter, found)
        finally:
            self.running = False
        self.passes += 1
        self.last_pass_at = clock.now()
        self.last_pass_s = time.monotonic() - t0
        log.info(
            "audit pass done %s",
            kv(files=self.files, bytes=self.bytes, seconds=f"{self.last_pass_s:.1f}", findings=len(found)),
        )
        return found

    async def _audit_dir(self, d: SyncDir, limiter: _Limiter, found: list[Finding]) -> None:
        stack = [""]
        while stack:
            reldir = stack.pop()
            listing = await asyncio.to_thread(self._list, d, reldir)
            if listing is None:
                continue  # gone or unreadable: its parent's entry says so
            dir_st, kids = listing
            small = await self._read_small(d, reldir, kids, limiter)
            seen: set[str] = set()
            for name, st in kids:
                rel = f"{reldir}/{name}" if reldir else name
                seen.add(name)
                real = small[name] if name in small else await self._entry(d, rel, name, st, limiter)
                if real is None:
                    continue
                if real.kind == DIR:
                    stack.append(rel)
                await self._compare(d, rel, real, st, dir_st, found)
            async with self._quiet():
                tree = self.side.trees.get(d.name)
                believed = list(tree.children(reldir)) if tree is not None else []
            for name in believed:
                if name not in seen:
                    await self._compare(d, f"{reldir}/{name}" if reldir else name, None, None, dir_st, found)

    def _list(self, d: SyncDir, reldir: str) -> tuple[os.stat_result, list[tuple[str, os.stat_result]]] | None:
        path = os.path.join(d.path, reldir) if reldir else str(d.path)
        try:
            dir_st = os.lstat(path)
            out = []
            with os.scandir(path) as it:
                for de in it:
                    rel = f"{reldir}/{de.name}" if reldir else de.name
                    if is_tmp_name(de.name) or self.side.excluder(rel, de.name):
                        continue
                    try:
                        out.append((de.name, de.stat(follow_symlinks=False)))
                    except FileNotFoundError:
                        continue
        except OSError:
            return None
        return dir_st, sorted(out)

    async def _read_small(
        self, d: SyncDir, reldir: str, kids: list[tuple[str, os.stat_result]], limiter: _Limiter
    ) -> dict[str, Entry | None]:
        """The entries of a directory's regular files of up to one limiter piece, read in batches of at
        most that many bytes (charged first), one worker-thread hop per batch: a tree of small files
        costs little more CPU than its bytes."""
        out: dict[str, Entry | None] = {}
        batch: list[tuple[str, os.stat_result]] = []
        cost = 0
        todo = [(n, st) for n, st in kids if stat.S_ISREG(st.st_mode) and st.st_size <= limiter.piece]
        for i, (name, st) in enumerate(todo):
            batch.append((name, st))
            cost += max(st.st_size, MIN_COST)
            if i + 1 == len(todo) or cost + max(todo[i + 1][1].st_size, MIN_COST) > limiter.piece:
                await limiter.take(cost)
                out.update(await asyncio.to_thread(self._read_batch, d, reldir, batch))
                batch, cost = [], 0
        for e in out.values():
            if e is not None and e.kind == FILE:
                self.files += 1
                self.bytes += e.size
        return out

    @staticmethod
    def _read_batch(d: SyncDir, reldir: str, batch: list[tuple[str, os.stat_result]]) -> dict[str, Entry | None]:
        out: dict[str, Entry | None] = {}
        for name, st in batch:
            try:
                out[name] = _file_entry(_read(os.path.join(d.path, reldir, name)))
            except (FileChanged, FileNotFoundError):
                out[name] = None  # being written, or gone: an event is on its way
            except OSError as exc:
                out[name] = error_entry(name, st, exc)
        return out

    async def _entry(self, d: SyncDir, rel: str, name: str, st: os.stat_result, limiter: _Limiter) -> Entry | None:
        """The entry of what is on disk now (a file bigger than a limiter piece: read piece by piece),
        never the cache."""
        full = os.path.join(d.path, rel)
        if not stat.S_ISREG(st.st_mode):
            try:
                return stat_entry(name, st, None, lambda: os.readlink(full), None, time.time_ns())
            except OSError:
                return None
        try:
            e = _file_entry(await self._hash(full, limiter))
        except (FileChanged, FileNotFoundError):
            return None  # being written, or gone: an event is on its way
        except OSError as exc:
            return error_entry(name, st, exc)
        self.files += 1
        self.bytes += e.size
        return e

    @staticmethod
    async def _hash(full: str, limiter: _Limiter) -> tuple[bytes, os.stat_result]:
        """BLAKE3 of a file read in pieces the limiter allows, in a worker thread, proven whole."""
        fd = await asyncio.to_thread(os.open, full, _READ_FLAGS)
        try:
            started = time.time_ns()
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise FileChanged()
            h = blake3.blake3()
            if limiter.bucket is None or before.st_size <= limiter.piece:
                await asyncio.to_thread(hash_into, fd, h)
            else:
                while True:
                    await limiter.take(limiter.piece)
                    if await asyncio.to_thread(_hash_some, fd, h, limiter.piece) < limiter.piece:
                        break
            digest = h.digest()
            after = await asyncio.to_thread(confirm_read, fd, digest, before, started)
            return digest, after
        finally:
            os.close(fd)

    @contextlib.asynccontextmanager
    async def _quiet(self) -> AsyncIterator[None]:
        """While nothing writes to the tree behind the disk (the standby's applier holds its lock)."""
        lock = getattr(self.side, "writer_lock", None)
        if lock is None:
            yield
            return
        async with lock:
            yield

    async def _compare(
        self,
        d: SyncDir,
        rel: str,
        real: Entry | None,
        st: os.stat_result | None,
        dir_st: os.stat_result,
        found: list[Finding],
    ) -> None:
        """Record and repair a difference between the disk and the tree, unless an event may be in flight."""
        async with self._quiet():
            tree = self.side.trees.get(d.name)
            if tree is None:
                return
            believed = tree.get(rel)
            if same(real, believed, self.side.with_owner):
                return
            now = time.time_ns()
            full = os.path.join(d.path, rel)
            try:
                parent_now = os.lstat(os.path.dirname(full))
                cur = os.lstat(full) if real is not None else None
            except FileNotFoundError:
                return  # changed since it was read: an event is on its way
            # Changed within the racy window (the path, or its directory for a creation or removal):
            # an event may still be on its way, and the next pass looks again.
            if not settled(parent_now, now) or parent_now.st_ctime_ns != dir_st.st_ctime_ns:
                return
            if cur is not None and st is not None and (not settled(cur, now) or cur.st_ctime_ns != st.st_ctime_ns):
                return
            finding = Finding(d.name, rel, _what(real, believed), self.node, clock.now())
        found.append(finding)
        self.recent.append(finding)
        self.unreported.append(finding)
        self.mismatches_total += 1
        log.warning(
            "audit found a change the watchers missed, repairing %s", kv(dir=d.name, path=rel, what=finding.what)
        )
        await self.side.refresh([full])

    # -- reporting ----------------------------------------------------------
    def take_unreported(self) -> list[Finding]:
        out, self.unreported = self.unreported, []
        return out

    def snapshot(self) -> dict[str, Any]:
        return {
            "enabled": self.cfg.enabled,
            "rate_mb_s": self.cfg.rate_mb_s,
            "interval_s": self.cfg.interval_s,
            "running": self.running,
            "passes": self.passes,
            "last_pass_at": self.last_pass_at,
            "last_pass_s": self.last_pass_s,
            "progress": {"files": self.files, "bytes": self.bytes},
            "mismatches_total": self.mismatches_total,
            "recent": [f.as_json() for f in self.recent],
        }


_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # a fifo swapped in never blocks


def _read(path: str) -> tuple[bytes, os.stat_result]:
    fd = os.open(path, _READ_FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileChanged()
        return hash_fd(fd)
    finally:
        os.close(fd)


def _file_entry(read: tuple[bytes, os.stat_result]) -> Entry:
    digest, st = read
    return Entry(FILE, stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns, digest, uid=st.st_uid, gid=st.st_gid)


def _hash_some(fd: int, h: blake3.blake3, n: int) -> int:
    """Feed up to `n` more bytes of `fd` to `h`; how many there were."""
    data = os.read(fd, n)
    h.update(data)
    return len(data)
