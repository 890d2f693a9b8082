"""The alarm a bundle is centred on (``--alarm FP``): found in this node's store, else the peer's."""

from __future__ import annotations

import asyncio
from typing import Any

from hasync.alarms.backends import open_store
from hasync.alarms.store import SQLITE_FILE
from hasync.config import Config
from hasync.errors import HasyncError, PeerError, UsageError
from hasync.peer.client import AgentClient
from hasync.peer.protocol import API


async def find_alarm(cfg: Config, fingerprint: str) -> tuple[dict[str, Any], str]:
    """The alarm `fingerprint` names (its active one, else its latest) and the node whose store has it."""
    if cfg.alarms.store != "sqlite" or (cfg.node.state_dir / SQLITE_FILE).exists():
        store = await asyncio.to_thread(open_store, cfg.alarms.store, cfg.node.state_dir)
        try:
            alarm = await asyncio.to_thread(store.get, fingerprint)
        finally:
            await asyncio.to_thread(store.close)
        if alarm is not None:
            return alarm.to_json(diagnosis=True), cfg.node.name
    async with AgentClient(cfg.peer_url(), cfg.token, cfg.peer.timeout_s, cfg.peer.name) as peer:
        try:
            docs = await peer.json("GET", f"{API}/alarms?all=1")
        except PeerError as exc:
            raise HasyncError(
                f"alarm {fingerprint} is not in {cfg.node.name}'s store and {cfg.peer.name} cannot be asked: "
                f"{exc.message}"
            ) from exc
    mine = [d for d in docs if d.get("fingerprint") == fingerprint]
    if not mine:
        raise UsageError(f"--alarm: no alarm with fingerprint {fingerprint} on {cfg.node.name} or {cfg.peer.name}")
    mine.sort(key=lambda d: (d.get("cleared_at") is None, d["raised_at"]), reverse=True)
    return mine[0], cfg.peer.name
