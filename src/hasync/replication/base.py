"""What both roles share: the config, the trees, the hash caches, background tasks."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from hasync.config import Config
from hasync.manifest import Excluder, Tree

log = logging.getLogger("hasync.replication")


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

    def cache_path(self, dir_name: str) -> Path:
        return self.cfg.node.state_dir / "manifests" / f"{dir_name}.msgpack"

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

    async def stop(self) -> None:
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
