"""What both roles share: the config, the trees, the hash caches, background tasks."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from hasync import hashcache
from hasync.config import Config, SyncDir
from hasync.errors import PathRefused
from hasync.fsutil import DirFds, is_tmp_name, validate_relpath
from hasync.halog import kv
from hasync.manifest import (
    DIR,
    ERROR,
    FILE,
    LINK,
    RACY_NS,
    Entry,
    Excluder,
    FileChanged,
    Tree,
    cache_path,
    dir_entry,
    error_entry,
    read_file_entry,
    same,
    same_dir,
    scan,
    stat_entry,
)
from hasync.peer.protocol import enc_entry, enc_path
from hasync.replication.watcher import Batch, DirWatcher
from hasync.tasks import periodic

log = logging.getLogger("hasync.replication")

BIG_FILE = 4 << 20  # hashed in a worker thread, not in the event loop
POLL_S = 2.0  # roots, failed watchers and directories without a watch are looked at this often
SAVE_S = 30.0  # the hash caches of changed dirs are saved this often


@dataclass(frozen=True)
class WatcherHealth:
    """`state`: ok (every directory watched), degraded (some polled: watch limit), failed (an inotify
    instance is down and is being reopened; its sync dir is polled meanwhile), off (not started)."""

    state: str
    watched_dirs: int
    polled_dirs: int
    overflows: int
    restarts: int
    error: str | None

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


class Side:
    """Base of the active and standby roles (one per agent, chosen from ROLES)."""

    role = "?"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.excluder = Excluder(cfg.sync.exclude)
        self.trees: dict[str, Tree | None] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stop_event = asyncio.Event()
        self._dirty: set[str] = set()
        self.sent_files = 0
        self.sent_bytes = 0
        self.received_files = 0
        self.received_bytes = 0
        self.watchers: dict[str, DirWatcher] = {}
        # While a scan runs, the paths events named: looked at again once it is done.
        self._scanning: set[str] | None = None
        self.with_owner = cfg.is_root
        self._again: set[Path] = set()  # paths to look at again once settled (see _look_again)
        self._again_tasks: set[asyncio.Task[None]] = set()

    def cache_path(self, dir_name: str) -> Path:
        return cache_path(self.cfg.node.state_dir, dir_name)

    def save_caches(self) -> None:
        """Persist the trees (the hash cache) of dirs that changed since the last save."""
        dirty, self._dirty = self._dirty, set()
        for name in dirty:
            tree = self.trees.get(name)
            if tree is not None:
                try:
                    hashcache.save(tree, self.cache_path(name))
                except OSError as exc:
                    log.warning("cannot save hash cache dir=%s error=%s", name, exc.strerror)
                    self._dirty.add(name)

    async def start(self) -> None:
        raise NotImplementedError

    def adopt(self, trees: dict[str, Tree | None]) -> None:
        """The trees of the side this one replaces (a role change), stopped: the active reuses their digests
        in its first scan instead of loading the hash caches they were just saved to."""

    async def prepare(self) -> None:
        """Know the local trees (for a one-off command), without starting background work."""
        raise NotImplementedError

    # -- keeping the trees current from file-system events ------------------
    def _changed(self, dir_name: str, rel: str) -> None:
        """A path's entry really changed (the role decides what that means)."""
        raise NotImplementedError

    def _touched(self, path: str | Path) -> None:
        """An event arrived for `path` (before it is looked at): a scan in progress looks at it again after."""
        if self._scanning is not None:
            self._scanning.add(str(path))

    async def root_changed(self, d: SyncDir) -> None:
        """A sync dir's root appeared, vanished or was replaced; or its watcher lost events: rescan it."""

    # -- the watcher: one supervised inotify instance per sync dir ----------------
    def _open_watchers(self) -> None:
        """Start watching (before the scans the watches protect: each scan adds its directories' watches)."""
        for d in self.cfg.sync.dirs:
            if d.name not in self.watchers:
                w = DirWatcher(d.name, d.path, partial(self._on_events, d))
                w.open()
                self.watchers[d.name] = w

    def _watch_hook(self, d: SyncDir) -> Callable[[str], None] | None:
        w = self.watchers.get(d.name)
        return None if w is None else w.watch

    def _prune_watches(self, d: SyncDir, tree: Tree | None, top: str = "") -> None:
        """After a scan of `top`: drop the watches of directories that are not in the tree any more."""
        w = self.watchers.get(d.name)
        if w is not None:
            w.forget(top, keep=set() if tree is None else set(tree.dirs))

    async def _on_events(self, d: SyncDir, batch: Batch) -> None:
        if batch.overflow or batch.root_moved:
            await self.root_changed(d)
            return
        await self.refresh(d.path / rel if rel else d.path for rel in batch.paths)

    def watcher_health(self) -> WatcherHealth:
        """The watcher's health for `status` and `/metrics`."""
        ws = list(self.watchers.values())
        polled = sum(len(w.unwatched) for w in ws)
        return WatcherHealth(
            state="off" if not ws else "failed" if any(w.failed for w in ws) else "degraded" if polled else "ok",
            watched_dirs=sum(w.watched() for w in ws),
            polled_dirs=polled,
            overflows=sum(w.overflows for w in ws),
            restarts=sum(w.restarts for w in ws),
            error=next((f"{w.name}: {w.error}" for w in ws if w.error), None),
        )

    async def _poll_roots(self, every_s: float = POLL_S) -> None:
        """Supervise: notice a sync dir's root appearing, vanishing or being replaced (inotify only sees inside
        an existing root), reopen a failed watcher (with backoff) and poll the directories it cannot watch."""
        await periodic(self._supervise_all, every_s, self._stop_event, log, "supervising the sync dirs")

    async def _supervise_all(self) -> None:
        for d in self.cfg.sync.dirs:
            try:  # one sync dir's failure is its own: the others are still looked at
                await self._supervise(d)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("watching sync dir failed %s", kv(dir=d.name))

    async def _supervise(self, d: SyncDir) -> None:
        tree = self.trees.get(d.name)
        if (tree is None) == d.path.is_dir() or (tree is not None and self._root_replaced(d, tree)):
            await self.root_changed(d)
            return
        w = self.watchers.get(d.name)
        if w is None or tree is None:
            return
        if w.failed:
            if time.monotonic() >= w.retry_at and w.reopen():
                log.info("file watcher restarted %s", kv(dir=d.name, restarts=w.restarts))
                await self.root_changed(d)  # a rescan adds the watches and finds what happened meanwhile
                return
        if w.unwatched:
            await self._poll_unwatched(d, w, tree)

    def _root_replaced(self, d: SyncDir, tree: Tree) -> bool:
        try:
            st = os.stat(d.path)
        except OSError:
            return False
        if tree.root_id != (0, 0) and (st.st_dev, st.st_ino) != tree.root_id:
            log.warning("sync dir root replaced %s", kv(dir=d.name, path=d.path))
            return True
        return False

    async def _poll_unwatched(self, d: SyncDir, w: DirWatcher, tree: Tree) -> None:
        """Look at the directories the watcher cannot watch (retrying their watches first)."""
        rels = sorted(w.unwatched)
        for rel in rels:
            w.watch(rel)
        snap = {rel: dict(tree.children(rel)) for rel in rels if rel == "" or tree.get(rel) is not None}
        changed = await asyncio.to_thread(_poll_dirs, d.path, snap)
        if changed:
            await self.refresh(d.path / rel if rel else d.path for rel in changed)

    def _start_root_poll(self) -> None:
        self._tasks.append(asyncio.create_task(self._poll_roots(), name="poll-roots"))

    async def _periodic_save(self) -> None:
        await periodic(lambda: asyncio.to_thread(self.save_caches), SAVE_S, self._stop_event, log, "saving hash caches")

    def _locate(self, path: str | Path) -> tuple[SyncDir, str] | None:
        sp = str(path)
        for d in self.cfg.sync.dirs:
            root = str(d.path)
            if sp == root:
                return d, ""
            if sp.startswith(root + "/"):
                return d, sp[len(root) + 1 :]
        return None

    def _ignored(self, rel: str) -> bool:
        parts = rel.split("/")
        for i, name in enumerate(parts):
            if is_tmp_name(name) or self.excluder("/".join(parts[: i + 1]), name):
                return True
        return False

    @staticmethod
    def enc(tree: Tree | None, rel: str, e: Entry) -> list[object]:
        return enc_entry(e, tree.dir_hash(rel) if tree is not None and e.kind == DIR else None)

    def listing(self, dir_name: str, reldirs: list[str]) -> list[list[object]]:
        """Children of each requested directory, with each subdirectory's Merkle hash (the active's, for
        the Merkle walk; a standby's, for a node that compares its copy when no node is active)."""
        tree = self.trees.get(dir_name)
        out: list[list[object]] = []
        for reldir in reldirs:
            if tree is None or reldir not in tree.dirs:
                out.append([enc_path(reldir), None, []])
                continue
            kids = tree.children(reldir)
            rows = []
            for name, e in kids.items():
                rel = f"{reldir}/{name}" if reldir else name
                rows.append([enc_path(name), self.enc(tree, rel, e)])
            out.append([enc_path(reldir), tree.dir_hash(reldir), rows])
        return out

    def roots(self) -> dict[str, bytes | None]:
        """The Merkle root of each sync dir's tree (None: the dir does not exist)."""
        return {name: (t.root_hash() if t is not None else None) for name, t in self.trees.items()}

    async def refresh(self, paths: Iterable[str | Path]) -> None:
        """Re-read the given absolute paths after file-system events."""
        todo: dict[tuple[str, str], SyncDir] = {}
        for p in paths:
            hit = self._locate(p)
            if hit is None:
                continue
            d, rel = hit
            if rel and self._ignored(rel):
                continue
            self._touched(p)
            todo[(d.name, rel)] = d
        # Parents before children, so a new directory is merged as a whole once.
        for (name, rel), d in sorted(todo.items(), key=lambda kv_: kv_[0][1].count("/")):
            tree = self.trees.get(name)
            if tree is None or rel == "":
                if self._scanning is not None:
                    continue  # the scan in progress decides; it looks at the path again after
                if (tree is None) != (not d.path.is_dir()) or (tree is not None and self._root_replaced(d, tree)):
                    await self.root_changed(d)
                continue
            await self._refresh_one(d, tree, rel)

    async def _refresh_one(self, d: SyncDir, tree: Tree, rel: str) -> None:
        try:
            validate_relpath(rel)  # never `..`, `.`, empty parts or NUL, whoever names the path
        except PathRefused as exc:
            log.error("path refused %s", kv(dir=d.name, error=exc.message))
            return
        parent = tree.get(rel.rpartition("/")[0]) if "/" in rel else None
        if "/" in rel and (parent is None or parent.kind != DIR):
            return  # its parent is unknown: the parent's own event brings it in
        with DirFds(d.path) as fds:  # looked at through no-follow dir fds, never through a symlinked parent
            await self._refresh_at(d, tree, rel, fds)

    async def _refresh_at(self, d: SyncDir, tree: Tree, rel: str, fds: DirFds) -> None:
        old = tree.get(rel)
        try:
            pfd, name = fds.parent(rel)
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except (FileNotFoundError, PathRefused):  # gone, or a parent is no longer a real directory
            if tree.remove(rel) is not None:
                self._changed(d.name, rel)
            return
        except OSError as exc:
            log.warning("cannot stat %s", kv(dir=d.name, path=rel, error=exc.strerror))
            return
        if stat.S_ISDIR(st.st_mode) and not same_dir(old, st):
            # A new directory, or another one renamed into its place (`mv app.new app`): all of it is new.
            sub = await asyncio.to_thread(self._scan_subtree, d, rel)
            if sub is not None:
                self._merge(d, tree, rel, st, sub)
            return
        w = self.watchers.get(d.name)
        if stat.S_ISDIR(st.st_mode) and w is not None and not w.covers(rel):
            # A directory the tree knows but nobody watches: one the standby made itself (its mkdir is an event
            # once the apply is done). Watched from now on, and looked at again (known digests reused).
            sub = await asyncio.to_thread(self._scan_subtree, d, rel, tree)
            if sub is not None:
                self._merge(d, tree, rel, st, sub)
            return
        read = lambda: read_file_entry(pfd, name)
        # An event on the path: its cached digest is not trusted, whatever its stat says (prev None).
        try:
            if stat.S_ISREG(st.st_mode) and st.st_size > BIG_FILE:
                new = await asyncio.to_thread(stat_entry, name, st, read, lambda: "", None, time.time_ns())
            else:
                new = stat_entry(name, st, read, lambda: os.readlink(name, dir_fd=pfd), None, time.time_ns())
        except FileNotFoundError:
            if tree.remove(rel) is not None:
                self._changed(d.name, rel)
            return
        except FileChanged:
            self._look_again(d.path / rel)  # being written: its next event brings it, or this look once settled
            return
        except OSError as exc:
            new = error_entry(name, st, exc)
        if new is None:
            if tree.remove(rel) is not None:
                self._changed(d.name, rel)
            return
        tree.put(rel, new)
        if not same(old, new, self.with_owner):
            self._changed(d.name, rel)
            if new.kind is ERROR and (old is None or old.kind is not ERROR):
                log.error("cannot read file %s", kv(dir=d.name, path=rel, cause=new.error))
        if new.kind == FILE and st.st_nlink > 1:
            self._refresh_links(d, tree, rel, st, new)

    def _refresh_links(self, d: SyncDir, tree: Tree, rel: str, st: os.stat_result, new: Entry) -> None:
        """A file with several names (hard links) changed through one: its other names have the same content,
        mode and owner, and no event of their own."""
        key = (st.st_dev, st.st_ino)
        names = tree.links.setdefault(key, set())
        names.add(rel)
        for other in sorted(names - {rel}):
            try:
                ost = os.lstat(d.path / other)
            except OSError:
                ost = None
            if ost is None or (ost.st_dev, ost.st_ino) != key:
                names.discard(other)  # renamed, removed or replaced since: its own event told
                continue
            old = tree.get(other)
            if old != new:
                tree.put(other, new)
            if not same(old, new, self.with_owner):
                self._changed(d.name, other)

    def _look_again(self, path: Path) -> None:
        """Refresh `path` again once the racy window has passed: a file still open for writing gives
        no event when its writer stops writing, and once settled it is read whoever holds it open."""
        if path in self._again:
            return
        self._again.add(path)

        def due() -> None:
            self._again.discard(path)
            task = asyncio.create_task(self.refresh([path]))
            self._again_tasks.add(task)
            task.add_done_callback(self._again_tasks.discard)

        asyncio.get_running_loop().call_later(RACY_NS / 1e9 + 0.2, due)

    def _scan_subtree(self, d: SyncDir, rel: str, reuse: Tree | None = None) -> Tree | None:
        try:
            return scan(d.path, self.excluder, reuse, self.with_owner, subdir=rel, on_dir=self._watch_hook(d))
        except FileNotFoundError:
            return None

    def _merge(self, d: SyncDir, tree: Tree, rel: str, st: os.stat_result, sub: Tree) -> None:
        """Put the scanned directory `rel` in place of what the tree had there; report what differs."""
        old = tree.get(rel)
        before = dict(tree.items(rel)) if old is not None and old.kind == DIR else {}
        if old is not None and old.kind == DIR:
            tree.remove(rel)
        new = dir_entry(st)
        tree.put(rel, new)
        if not same(old, new, self.with_owner):
            self._changed(d.name, rel)
        for path, e in sub.items(rel):
            tree.put(path, e)
            if not same(before.pop(path, None), e, self.with_owner):
                self._changed(d.name, path)
        for path in sorted(before, key=lambda p: -p.count("/")):
            self._changed(d.name, path)  # not in the new directory: removed
        for key, names in sub.links.items():
            tree.links.setdefault(key, set()).update(names)
        self._prune_watches(d, tree, rel)

    async def stop(self) -> None:
        for w in self.watchers.values():
            w.close()
        self._stop_event.set()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()
        await asyncio.to_thread(self.save_caches)


def _differs(e: Entry | None, st: os.stat_result) -> bool:
    """Whether a path's lstat result may not match its entry (it must be looked at)."""
    if e is None:
        return True
    mode = st.st_mode
    if e.mode != stat.S_IMODE(mode) or (e.uid, e.gid) != (st.st_uid, st.st_gid):
        return True
    if stat.S_ISDIR(mode):
        return not same_dir(e, st)
    if stat.S_ISREG(mode):
        return e.kind != FILE or e.ino != st.st_ino or e.size != st.st_size or e.mtime_ns != st.st_mtime_ns
    if stat.S_ISLNK(mode):
        return e.kind != LINK or e.size != st.st_size or e.mtime_ns != st.st_mtime_ns
    return True


def _poll_dirs(root: Path, dirs: dict[str, dict[str, Entry]]) -> set[str]:
    """The paths in the given directories (and their known children) whose lstat differs from their entries."""
    out: set[str] = set()
    for reldir, kids in dirs.items():
        absdir = root / reldir if reldir else root
        try:
            names = os.listdir(absdir)
        except OSError:
            out.add(reldir)
            continue
        for name in kids.keys() | set(names):
            rel = f"{reldir}/{name}" if reldir else name
            try:
                st = os.lstat(absdir / name)
            except OSError:
                if name in kids:
                    out.add(rel)
                continue
            if _differs(kids.get(name), st):
                out.add(rel)
    return out
