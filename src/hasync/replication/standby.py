"""The standby role: pulls the active's trees and changes and applies them.

Mechanism: at start, and every `full_reconcile_s`, a Merkle walk compares
the local trees with the active's, level by level, fetching listings only of
directories whose hashes differ (one request when nothing changed). Between
walks it long-polls the active's change feed, so a change is fetched the
moment the active sees it. The walk's listings and the files (a framed stream)
are fetched by replication/fetch.py and applied by the Applier (atomic per
file, batch-flushed, old versions backed up); the failures of each run are
collected in a `Failures` and become `errors`, the paths out of sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hasync import clock, hashcache
from hasync.backup import BackupSets
from hasync.config import Config, SyncDir
from hasync.errors import Cause, MalformedAnswer, PeerError, PeerWrongRole, first_cause
from hasync.fsutil import is_tmp_name, remove_paths
from hasync.halog import kv
from hasync.manifest import DIR, FILE, Plan, Tree, compare_entry, scan
from hasync.peer.client import AgentClient
from hasync.peer.models import ChangeFeed
from hasync.quickcheck import QuickIndex, index_path
from hasync.replication.apply import Applier, ErrorKey, Failures, FileError
from hasync.replication.base import Side
from hasync.replication.fetch import Fetcher, Progress, walk
from hasync.replication.partials import PartialTransfers
from hasync.tasks import Backoff, wait_or_stop

log = logging.getLogger("hasync.standby")

LONG_POLL_S = 25.0
BUSY_RETRY_S = 0.5  # a file that kept changing while read is asked for again after this
FSYNC_EACH_MAX = 16  # up to this many files, fsync each; above, one syncfs per batch


@dataclass
class SyncResult:
    in_sync: bool
    files: int = 0
    bytes: int = 0
    deleted: int = 0
    errors: list[FileError] = field(default_factory=list)
    cause: Cause | None = None
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        """The result of a sync as `POST /v1/sync` ends and `hasync sync --once --json` prints it."""
        return {
            "in_sync": self.in_sync,
            "files": self.files,
            "bytes": self.bytes,
            "deleted": self.deleted,
            "cause": None if self.cause is None else self.cause.value,
            "message": self.message,
            "errors": [e.as_json() for e in self.errors],
        }


@dataclass(frozen=True)
class StandbySnapshot:
    """The side's sync state at one moment, as the standby's status shows it."""

    in_sync: bool | None
    pending: int
    last_sync_at: float | None  # clock.now() when it was last in sync
    peer_error: PeerError | None  # the peer failure, else the refused change feed
    errors: tuple[FileError, ...]  # by dir and path
    cause: Cause | None
    seq: int


class StandbySide(Side):
    """Keeps this node's sync dirs equal to the active's."""

    role = "standby"

    def __init__(self, cfg: Config, client: AgentClient | None = None) -> None:
        super().__init__(cfg)
        self.client = client or AgentClient(
            cfg.peer_url(), cfg.token, cfg.peer.timeout_s, cfg.peer.name, cfg.limits.max_response_bytes
        )
        self.backups = BackupSets(cfg.backup.dir, cfg.cluster.role_name, cfg.backup.max_copies, cfg.backup.set_period_s)
        self.errors: dict[ErrorKey, FileError] = {}
        self.peer_error: PeerError | None = None
        # The active's change feed refused for its shape (a peer fault, sync_error): cleared by the next
        # well-formed feed; meanwhile the standby falls back to full reconciles.
        self.feed_error: PeerError | None = None
        self.instance = ""
        self.seq = 0
        self.with_owner = cfg.is_root
        self.remote_roots: dict[str, bytes | None] = {}
        self.in_sync: bool | None = None
        self.last_sync_at: float | None = None
        self.oldest_pending_at: float | None = None
        self.pending = 0
        self.pending_bytes = 0  # of the files being fetched now
        self.heard_at: float | None = None  # monotonic time of the last answer of the active
        self._lock = asyncio.Lock()
        self._need_full = True
        self._last_full = 0.0
        self.missing: set[str] = set()
        self._deferred: set[str] = set()
        self._kick_task: asyncio.Task[None] | None = None
        self._kick_again = False
        self._poll_abort = asyncio.Event()
        self._peer_back = asyncio.Event()  # set while the active answers: ends the feed loop's retry wait
        self.retry = Backoff(0.2, 5.0)  # the feed loop's wait after a peer failure (unless heard before)
        self.resumes = PartialTransfers(cfg.node.state_dir)
        self.fetcher = Fetcher(self.client, self.resumes, cfg.sync.batch_files, cfg.sync.batch_bytes, self._received)
        self.busy: dict[tuple[str, str], float] = {}  # files that kept changing while read: since when
        self._busy_task: asyncio.Task[None] | None = None
        self._out_reported = False  # an out-of-sync state with a cause was seen since "in sync" was logged

    # -- lifecycle ---------------------------------------------------------
    async def load_local(self) -> None:
        """Scan the local trees (reusing the hash cache) and remove the temp files a crash left."""
        await asyncio.to_thread(self.resumes.load, {d.name for d in self.cfg.sync.dirs})
        self._scanning = set()
        try:
            for d in self.cfg.sync.dirs:
                await self._load_one(d)
        finally:
            touched, self._scanning = self._scanning, None
        if touched:  # changed while the scans ran (their watches were added before the listings)
            await self.refresh(touched)

    async def _load_one(self, d: SyncDir) -> None:
        tree = self.trees[d.name] = await asyncio.to_thread(self._scan_local, d)
        if tree is not None:
            # Temp files a crash or an interruption left: removed, but for the partial transfers of big
            # files, which the next fetch resumes (replication/partials.py).
            remove, kept = self.resumes.keep_temps(d.name, d.path, tree.temps)
            tree.temps.clear()
            if remove:
                n = await asyncio.to_thread(remove_paths, remove)
                log.warning("removed leftover temp files %s", kv(dir=d.name, count=n))
            if kept:
                log.info("partial transfers kept to resume %s", kv(dir=d.name, count=kept))

    async def prepare(self) -> None:
        await self.load_local()

    @property
    def writer_lock(self) -> asyncio.Lock:
        """Held by the one writer (reconcile, change feed): the audit compares disk and tree under it."""
        return self._lock

    def _scan_local(self, d: SyncDir) -> Tree | None:
        current = self.trees.get(d.name)
        prev = current if current is not None else hashcache.load(self.cache_path(d.name))
        try:
            tree = scan(
                d.path, self.excluder, prev, self.with_owner, consume=current is None, on_dir=self._watch_hook(d)
            )
        except FileNotFoundError:
            self._prune_watches(d, None)
            return None
        self._prune_watches(d, tree)
        if tree.changed:
            self._dirty.add(d.name)  # nothing changed: the cache on disk is still right
        return tree

    async def start(self) -> None:
        # Watched before the scan: a local change made from now on is seen. Events for the standby's own
        # writes are deferred until each apply is done, and then match the tree (refresh finds no drift).
        self._open_watchers()
        await self.load_local()
        self._start_root_poll()
        self._tasks.append(asyncio.create_task(self._run(), name="standby-loop"))
        self._tasks.append(asyncio.create_task(self._periodic_save(), name="save-cache"))

    async def stop(self) -> None:
        if self._kick_task is not None:
            self._kick_task.cancel()
        if self._busy_task is not None:
            self._busy_task.cancel()
        await super().stop()
        async with self._lock:  # nothing writes now: the index describes the copy as it is
            await asyncio.to_thread(self.save_quick_indexes)
        await self.client.close()
        self.fetcher.close()

    def save_quick_indexes(self) -> None:
        """Write the quick check's index beside each hash cache (see hasync.quickcheck).

        Only while nothing changes the trees (at the end of `sync --once`, when the
        agent stops): the Merkle hashes are computed here. An index the agent did not
        rewrite before it was killed is only stale, never wrong: its signatures no
        longer match the disk, so the next quick check takes the full scan.
        """
        for name, tree in list(self.trees.items()):
            if tree is None:
                continue
            try:
                QuickIndex.of(tree).save(index_path(self.cache_path(name)))
            except OSError as exc:
                log.warning("cannot save quick-check index %s", kv(dir=name, error=exc.strerror))

    # -- local drift: someone changed the standby's copy --------------------
    async def refresh(self, paths: Iterable[str | Path]) -> None:
        # Temp names are ours. A path we renamed into place matches its tree entry: refresh sees no drift.
        todo = [p for p in map(str, paths) if not is_tmp_name(p.rpartition("/")[2])]
        if not todo:
            return
        if self._lock.locked():
            # An apply is in progress: look once it is done, at the final state.
            self._deferred.update(todo)
            return
        await super().refresh(todo)

    async def _after_apply(self) -> None:
        if self._deferred:
            paths, self._deferred = self._deferred, set()
            await super().refresh(paths)

    def _changed(self, dir_name: str, rel: str) -> None:
        if self._kick_task is None or self._kick_task.done():  # one line per repair, not one per path
            log.warning("the standby's copy was changed locally, repairing %s", kv(dir=dir_name, path=rel or "/"))
        self._dirty.add(dir_name)
        self.kick()

    async def root_changed(self, d: SyncDir) -> None:
        async with self._lock:  # not while an apply writes: its tree would be replaced under it
            self.trees[d.name] = await asyncio.to_thread(self._scan_local, d)
        self._need_full = True
        self.kick()

    def kick(self) -> None:
        """Reconcile soon (debounced), without waiting for the long-poll to return. A kick while a
        kicked reconcile runs (a local change looked at once its writes were done) brings another."""
        self._kick_again = True
        if self._kick_task is None or self._kick_task.done():
            self._kick_task = asyncio.create_task(self._kicked())

    async def catch_up(self, timeout: float) -> bool:
        """Reconcile now (the peer is back after a failure); True when done within `timeout`."""
        self.kick()
        assert self._kick_task is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._kick_task), timeout)
        except TimeoutError:
            return False
        return True

    async def _kicked(self) -> None:
        while self._kick_again:
            await asyncio.sleep(0.05)
            self._kick_again = False  # kicks from now on come after what this reconcile sees
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconcile after a local change failed")

    async def _run(self) -> None:
        while True:
            try:
                due = time.monotonic() - self._last_full > self.cfg.sync.full_reconcile_s
                if (
                    self._need_full
                    or due
                    or (self.errors and time.monotonic() - self._last_full > self.cfg.sync.retry_s)
                ):
                    await self.reconcile(rescan_local=due)
                # Come back in time for the next full reconcile (and, with errors, the next retry).
                until_full = self.cfg.sync.full_reconcile_s - (time.monotonic() - self._last_full)
                wait = max(0.5, min(LONG_POLL_S, until_full, self.cfg.sync.retry_s if self.errors else LONG_POLL_S))
                try:
                    feed = await self._long_poll(wait)
                except MalformedAnswer as exc:
                    self._feed_refused(exc.reason)
                    await asyncio.sleep(self.retry.next())
                    continue
                await self._apply_changes(feed)
                self.retry.reset()
            except asyncio.CancelledError:
                raise
            except PeerError as exc:
                self.peer_failed(exc)
                self._need_full = True
                # Until the next try, or the peer heard again (by the check): a wait grown in a long outage
                # would leave the feed behind a recovered peer, its changes ageing there as lag.
                await wait_or_stop(self._peer_back, self.retry.next())
            except Exception:
                log.exception("standby loop error")
                self._need_full = True
                await asyncio.sleep(1.0)

    async def _long_poll(self, wait: float) -> ChangeFeed:
        """The change feed's long-poll, dropped when a peer failure is seen meanwhile (by the check).
        After a silent partition or a pulled cable its connection is dead; waiting for its own timeout
        (wait + timeout_s), or for TCP to retransmit an answer lost in the outage, would keep the
        standby from catching up for many seconds after the link is back."""
        self._poll_abort.clear()
        poll = asyncio.ensure_future(self.client.change_feed(self.instance, self.seq, wait))
        abort = asyncio.ensure_future(self._poll_abort.wait())
        try:
            await asyncio.wait({poll, abort}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            abort.cancel()
            if not poll.done():
                poll.cancel()
        if not poll.done() or poll.cancelled():
            with contextlib.suppress(asyncio.CancelledError, PeerError):
                await poll
            raise self.peer_error or PeerError("change feed dropped after a peer failure")
        return poll.result()

    def peer_failed(self, exc: PeerError) -> None:
        if self.peer_error is None or type(self.peer_error) is not type(exc):
            log.error("peer unavailable %s", kv(cause=exc.cause, error=exc.message))
        self.peer_error = exc
        self.in_sync = False
        self._peer_back.clear()
        self._poll_abort.set()

    def _feed_refused(self, reason: str) -> None:
        """A change feed of the wrong shape: refused whole, logged when it starts or its reason changes."""
        err = PeerError(f"refused the change feed of {self.cfg.peer.name}: {reason}")
        if self.feed_error is None or self.feed_error.message != err.message:
            log.error("refused the change feed of the active %s", kv(peer=self.cfg.peer.name, error=reason))
        self.feed_error = err
        self._need_full = True
        self.in_sync = False

    def peer_ok(self) -> None:
        self.heard_at = time.monotonic()
        if self.peer_error is not None:
            log.info("peer available again %s", kv(peer=self.cfg.peer.name))
        self.peer_error = None
        self._peer_back.set()

    # -- full reconcile (Merkle walk) --------------------------------------
    async def reconcile(self, progress: Progress | None = None, rescan_local: bool = False) -> SyncResult:
        """Bring every sync dir in line with the active now; the one writer holds the lock."""
        async with self._lock:
            if rescan_local:
                for d in self.cfg.sync.dirs:
                    self.trees[d.name] = await asyncio.to_thread(self._scan_local, d)
            try:
                info = await self.client.peer_info(owner=self.cfg.is_root)
                if not info.is_active:
                    raise PeerWrongRole(
                        f"{self.cfg.peer.name} is not the active node (it says {info.role or None!r}): "
                        f"the two nodes disagree on which one is active (hasync status on both)"
                    )
            except PeerError as exc:
                self.peer_failed(exc)
                return self._result(SyncResult(False, cause=exc.cause, message=exc.message))
            self.peer_ok()
            self._set_owner_mode(info.with_owner)
            roots = dict(info.roots)
            plans: dict[str, tuple[Plan, dict[str, int]]] = {}
            failures = Failures(self.errors)
            for d in self.cfg.sync.dirs:
                plan_sizes = await self._plan(d, roots.get(d.name), failures)
                if plan_sizes is not None:
                    plans[d.name] = plan_sizes
            total_files = sum(len(p.fetch) for p, _ in plans.values())
            total_bytes = sum(sum(s.values()) for _, s in plans.values())
            self.pending = total_files + sum(len(p.make) + len(p.chmod) + len(p.delete) for p, _ in plans.values())
            self.pending_bytes = total_bytes
            tally = {"files": 0, "bytes": 0, "total_files": total_files, "total_bytes": total_bytes, "deleted": 0}
            if progress:
                progress(dict(tally, event="start"))
            try:
                for name, (plan, sizes) in plans.items():
                    await self._apply_plan(self.cfg.sync_dir(name), plan, sizes, failures, tally, progress)
            except PeerError as exc:
                self.peer_failed(exc)
                self._set_errors(failures.errors, full=True)
                return self._result(SyncResult(False, cause=exc.cause, message=exc.message))
            self.instance, self.seq = info.instance, info.seq
            self.remote_roots = roots
            stale = self.resumes.discard_rest({d.name: d.path for d in self.cfg.sync.dirs if d.name in plans})
            if stale:
                log.info("partial transfers not needed any more, removed %s", kv(count=stale))
            self._set_errors(failures.errors, full=True)
            self._need_full = False
            self._last_full = time.monotonic()
            self.pending = self.pending_bytes = 0
            self._update_in_sync()
            result = SyncResult(bool(self.in_sync), tally["files"], tally["bytes"], tally["deleted"])
        await self._after_apply()
        return self._result(result)

    def _result(self, r: SyncResult) -> SyncResult:
        r.errors = sorted(self.errors.values(), key=lambda e: (e.dir, e.path))
        if r.cause is None and r.errors:
            r.cause = self.main_cause()
        return r

    def _set_owner_mode(self, with_owner: bool) -> None:
        self.with_owner = with_owner
        for tree in self.trees.values():
            if tree is not None:
                tree.set_with_owner(with_owner)

    async def _plan(
        self, d: SyncDir, remote_root: bytes | None, failures: Failures
    ) -> tuple[Plan, dict[str, int]] | None:
        local = self.trees.get(d.name)
        if (local is None) == d.path.is_dir():  # the root appeared or vanished since the last look
            local = self.trees[d.name] = await asyncio.to_thread(self._scan_local, d)
        if remote_root is None or local is None:
            msg = (
                f"sync dir {d.name!r} does not exist on the active"
                if remote_root is None
                else f"sync dir {d.name!r} does not exist on the standby: {d.path}"
            )
            failures.fail(d.name, "", Cause.SOURCE_MISSING, msg)
            self.missing.add(d.name)
            return None
        self.missing.discard(d.name)
        if local.root_hash() == remote_root:
            return Plan(), {}
        return await walk(self.client, d.name, local, self.with_owner, failures)

    # -- the change feed ---------------------------------------------------
    async def _apply_changes(self, resp: ChangeFeed) -> None:
        if self.feed_error is not None:
            log.info("change feed of the active accepted again %s", kv(peer=self.cfg.peer.name))
            self.feed_error = None
        if resp.reset or resp.instance != self.instance:
            self._need_full = True
            return
        self.peer_ok()
        if not resp.changes:
            self.remote_roots = dict(resp.roots)
            self.seq = resp.seq
            self._update_in_sync()
            return
        async with self._lock:
            if resp.instance != self.instance or self._need_full:
                return
            by_dir: dict[str, Plan] = {}
            sizes: dict[str, dict[str, int]] = {}
            failures = Failures(self.errors)
            touched: set[ErrorKey] = set()
            for change in resp.changes:
                name, rel, want = change.dir, change.path, change.entry
                tree = self.trees.get(name)
                if change.refused is not None:
                    if tree is not None:
                        failures.refused(name, "", change.raw, change.refused)
                    continue
                if tree is None or rel == "":
                    self._need_full = True
                    continue
                plan = by_dir.setdefault(name, Plan())
                compare_entry(rel, want, tree.get(rel), self.with_owner, plan)
                touched.add((name, rel))
                if want is not None and want.kind == FILE:
                    sizes.setdefault(name, {})[rel] = want.size
            self.pending = sum(len(p.fetch) + len(p.make) + len(p.chmod) + len(p.delete) for p in by_dir.values())
            self.pending_bytes = sum(sizes.get(n, {}).get(r, 0) for n, p in by_dir.items() for r in p.fetch)
            tally = {"files": 0, "bytes": 0, "deleted": 0}
            for name, plan in by_dir.items():
                plan.delete.sort(key=lambda p: (-p.count("/"), p))
                plan.make.sort(key=lambda pe: pe[0].count("/"))
                await self._apply_plan(self.cfg.sync_dir(name), plan, sizes.get(name, {}), failures, tally, None)
            for key in touched:
                self.errors.pop(key, None)
            self.errors.update(failures.errors)
            self.seq = resp.seq
            self.remote_roots = dict(resp.roots)
            self.pending = self.pending_bytes = 0
            self._update_in_sync()
        await self._after_apply()

    def _update_in_sync(self) -> None:
        ok = self.peer_error is None and self.feed_error is None and not self.errors and not self._need_full
        if ok:
            for name, remote in self.remote_roots.items():
                tree = self.trees.get(name)
                if remote is None or tree is None or tree.root_hash() != remote:
                    ok = False
                    break
        if not ok and (self.errors or self.peer_error is not None or self.feed_error is not None):
            self._out_reported = True
        # Logged once at start and after a fault, not after every batch that had changes in flight.
        if ok and (self.in_sync is None or self._out_reported):
            log.info("in sync %s", kv(peer=self.cfg.peer.name, seq=self.seq))
            self._out_reported = False
        self.in_sync = ok
        if ok:
            self.last_sync_at = clock.now()

    def _set_errors(self, errors: dict[ErrorKey, FileError], full: bool) -> None:
        for key, err in errors.items():
            old = self.errors.get(key)
            if old is None or old.cause != err.cause:
                log.error("sync failed %s", kv(dir=err.dir, path=err.path or "/", cause=err.cause, error=err.message))
            else:
                errors[key] = old  # keep the first time it was seen
        for key in self.errors.keys() - errors.keys():
            e = self.errors[key]
            log.info("sync error cleared %s", kv(dir=e.dir, path=e.path or "/", cause=e.cause))
        self.errors = errors if full else {**self.errors, **errors}

    def sorted_errors(self) -> list[FileError]:
        return sorted(self.errors.values(), key=lambda e: (e.dir, e.path))

    def main_cause(self) -> Cause | None:
        """The one cause to report: peer problems first, then the most frequent file cause."""
        if self.peer_error is not None:
            return self.peer_error.cause
        if self.feed_error is not None:
            return self.feed_error.cause
        if not self.errors:
            return None
        return first_cause(e.cause for e in self.errors.values())

    # -- applying a plan ---------------------------------------------------
    def _received(self, nbytes: int) -> None:
        self.received_files += 1
        self.received_bytes += nbytes

    async def _apply_plan(
        self,
        d: SyncDir,
        plan: Plan,
        sizes: dict[str, int],
        failures: Failures,
        tally: dict[str, int],
        progress: Progress | None,
    ) -> None:
        tree = self.trees[d.name]
        assert tree is not None
        for rel, e in plan.errors:
            assert e.error is not None  # an ERROR entry always carries its ScanError
            failures.fail(d.name, rel, e.error.cause, f"cannot be read on the active: {e.error.message}")
        if not (plan.fetch or plan.make or plan.chmod or plan.delete):
            return
        applier = Applier(
            d, tree, self.backups, self.cfg.is_root, len(plan.fetch) <= FSYNC_EACH_MAX, self._watch_hook(d)
        )
        self._dirty.add(d.name)
        try:
            for rel in plan.delete:
                failures.guard(d.name, rel, applier.delete, rel)
                tally["deleted"] += 1
            for rel, e in plan.make:
                failures.guard(d.name, rel, applier.make_dir if e.kind == DIR else applier.make_link, rel, e)
            for rel, e in plan.chmod:
                failures.guard(d.name, rel, applier.chmod, rel, e)
            busy = await self.fetcher.fetch(d, applier, plan.fetch, sizes, failures, tally, progress)
            if busy:
                self._still_busy(failures, d, busy)
            for rel in set(plan.fetch).difference(busy):
                self.busy.pop((d.name, rel), None)
            await applier.flushed()
            failures.guard(d.name, "", applier.finish)
            if not applier.fsync_each:
                # One flush for every rename, creation and removal of this apply.
                await asyncio.to_thread(failures.guard, d.name, "", applier.sync_all)
        finally:
            await applier.aclose()

    def _still_busy(self, failures: Failures, d: SyncDir, paths: list[str]) -> None:
        """Files that kept changing while they were read: retried soon and quietly (a file being saved
        is in flight, not a fault); reported (sync_error) once one has been busy for `retry_s`."""
        now = time.monotonic()
        for rel in paths:
            since = self.busy.setdefault((d.name, rel), now)
            if now - since >= self.cfg.sync.retry_s:
                failures.fail(
                    d.name, rel, Cause.SYNC_ERROR, f"file kept changing during transfer ({now - since:.0f} s)"
                )
        if self._busy_task is None or self._busy_task.done():
            self._busy_task = asyncio.create_task(self._retry_busy())

    async def _retry_busy(self) -> None:
        await asyncio.sleep(BUSY_RETRY_S)
        self.kick()

    # -- status ------------------------------------------------------------
    def snapshot(self) -> StandbySnapshot:
        return StandbySnapshot(
            self.in_sync,
            self.pending,
            self.last_sync_at,
            self.peer_error or self.feed_error,
            tuple(sorted(self.errors.values(), key=lambda e: (e.dir, e.path))),
            self.main_cause(),
            self.seq,
        )


__all__ = ["FileError", "StandbySide", "StandbySnapshot", "SyncResult"]
