"""What both roles share: the config, the trees, the hash caches, background tasks."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import Iterable
from pathlib import Path

import watchfiles

from hasync.config import Config, SyncDir
from hasync.fsutil import is_tmp_name
from hasync.halog import kv
from hasync.manifest import (
    DIR,
    RACY_NS,
    Entry,
    Excluder,
    FileChanged,
    Tree,
    cache_path,
    error_entry,
    read_file_entry,
    same,
    scan,
    stat_entry,
)

log = logging.getLogger("hasync.replication")

BIG_FILE = 4 << 20  # hashed in a worker thread, not in the event loop


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
        self._watch_task: asyncio.Task[None] | None = None
        self._watched: tuple[Path, ...] = ()
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
                    tree.save(self.cache_path(name))
                except OSError as exc:
                    log.warning("cannot save hash cache dir=%s error=%s", name, exc.strerror)
                    self._dirty.add(name)

    async def start(self) -> None:
        raise NotImplementedError

    async def prepare(self) -> None:
        """Know the local trees (for a one-off command), without starting background work."""
        raise NotImplementedError

    # -- keeping the trees current from file-system events ------------------
    def _changed(self, dir_name: str, rel: str) -> None:
        """A path's entry really changed (the role decides what that means)."""
        raise NotImplementedError

    def _touched(self, path: str | Path) -> None:
        """An event arrived for `path` (before it is looked at)."""

    async def root_changed(self, d: SyncDir) -> None:
        """A sync dir's root appeared or vanished."""

    async def _poll_roots(self, every_s: float = 2.0) -> None:
        """Notice a sync dir's root appearing or vanishing: the watcher only sees inside existing roots."""
        while True:
            await asyncio.sleep(every_s)
            for d in self.cfg.sync.dirs:
                if (self.trees.get(d.name) is None) == d.path.is_dir():
                    await self.root_changed(d)

    def _start_root_poll(self) -> None:
        self._tasks.append(asyncio.create_task(self._poll_roots(), name="poll-roots"))

    def _restart_watcher(self, force: bool = False) -> None:
        """Watch the roots that exist; `force` after a root was replaced (a new inode to watch)."""
        roots = tuple(d.path for d in self.cfg.sync.dirs if self.trees.get(d.name) is not None)
        if not force and roots == self._watched and self._watch_task is not None and not self._watch_task.done():
            return
        if self._watch_task is not None:
            self._watch_task.cancel()
        self._watched = roots
        if roots:
            self._watch_task = asyncio.create_task(self._watch(roots), name="watch")

    async def _watch(self, roots: tuple[Path, ...]) -> None:
        # step: how long to wait for more events after the first before yielding.
        # Small, so that one changed file reaches the standby in milliseconds.
        try:
            async for changes in watchfiles.awatch(
                *roots,
                watch_filter=None,
                debounce=200,
                step=5,
                stop_event=self._stop_event,
                rust_timeout=1000,
                yield_on_timeout=False,
                recursive=True,
            ):
                await self.refresh(p for _, p in changes)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the watcher died (e.g. a root was removed): rescan will restart it
            log.error("file watcher stopped %s", kv(error=exc))
            self._watched = ()

    async def _periodic_save(self) -> None:
        while True:
            await asyncio.sleep(30)
            await asyncio.to_thread(self.save_caches)

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
                if (tree is None) != (not d.path.is_dir()):
                    await self.root_changed(d)
                continue
            await self._refresh_one(d, tree, rel)

    async def _refresh_one(self, d: SyncDir, tree: Tree, rel: str) -> None:
        parent = tree.get(rel.rpartition("/")[0]) if "/" in rel else None
        if "/" in rel and (parent is None or parent.kind != DIR):
            return  # its parent is unknown: the parent's own event brings it in
        full = d.path / rel
        old = tree.get(rel)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            if tree.remove(rel) is not None:
                self._changed(d.name, rel)
            return
        except OSError as exc:
            log.warning("cannot stat %s", kv(dir=d.name, path=rel, error=exc.strerror))
            return
        name = rel.rpartition("/")[2]
        if stat.S_ISDIR(st.st_mode) and (old is None or old.kind != DIR):
            sub = await asyncio.to_thread(self._scan_subtree, d, rel)
            if sub is not None:
                self._merge(d.name, tree, rel, st, sub)
            return
        read = lambda: read_file_entry(None, str(full))
        # An event on the path: its cached digest is not trusted, whatever its stat says (prev None).
        try:
            if stat.S_ISREG(st.st_mode) and st.st_size > BIG_FILE:
                new = await asyncio.to_thread(stat_entry, name, st, read, lambda: "", None, time.time_ns())
            else:
                new = stat_entry(name, st, read, lambda: os.readlink(full), None, time.time_ns())
        except FileNotFoundError:
            if tree.remove(rel) is not None:
                self._changed(d.name, rel)
            return
        except FileChanged:
            self._look_again(full)  # being written: its next event brings it, or this look once settled
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
            if new.kind == "e" and (old is None or old.kind != "e"):
                log.error("cannot read file %s", kv(dir=d.name, path=rel, cause=new.error))

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

    def _scan_subtree(self, d: SyncDir, rel: str) -> Tree | None:
        try:
            return scan(d.path, self.excluder, None, self.with_owner, subdir=rel)
        except FileNotFoundError:
            return None

    def _merge(self, name: str, tree: Tree, rel: str, st: os.stat_result, sub: Tree) -> None:
        tree.put(rel, Entry(DIR, stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid, ino=st.st_ino))
        self._changed(name, rel)
        for path, e in sub.items(rel):
            tree.put(path, e)
            self._changed(name, path)

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
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
