"""This node's part of a bundle: its log cut here, its alarm store, its agent's status, its masked config."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from hasync.alarms.backends import open_store
from hasync.alarms.store import SQLITE_FILE
from hasync.collect.configs import masked_config
from hasync.collect.part import NodePart, ProgressFn, json_bytes
from hasync.collect.spool import LogSpool, cut_json, render
from hasync.collect.window import Window
from hasync.config import Config
from hasync.errors import HasyncError, PeerError
from hasync.logcut import CutStats, iter_window
from hasync.masking import Masker
from hasync.peer.client import AgentClient

POLL_S = 0.2  # how often the progress of a cut running in a thread is read


async def local_part(
    cfg: Config, window: Window, spool_dir: Path, masker: Masker, progress: ProgressFn, role: str | None
) -> NodePart:
    """This node's logs (cut here), alarms (its store), status (its agent, if running) and masked config.
    `role` is this node's, as its role provider says (None: it could not say)."""
    part = NodePart(cfg.node.name, True, window, hostname=cfg.node.hostname, reachable=True, role=role)
    part.spool = spool = LogSpool(spool_dir, masker)
    stats = CutStats()
    label = f"{cfg.node.name} log"

    def cut() -> None:
        for text in render(iter_window(cfg.node.log_dir, window.start, window.end, stats=stats), masker, part.name):
            spool.feed(text)
        spool.close_input()

    await _polling(asyncio.to_thread(cut), lambda: progress(label, stats.bytes_read, stats.bytes_total))
    part.log = cut_json(stats)
    if not stats.files_read and not stats.files_skipped:
        part.notes.append(f"{part.name}: no HA run log in {cfg.node.log_dir}")
    for err in stats.errors:
        part.warnings.append(f"{part.name}: HA log {err}")
    part.docs["alarms.json"] = json_bytes(masker.json(await _local_alarms(cfg, part)))
    part.docs["status.json"] = json_bytes(masker.json(await _local_status(cfg, part)))
    part.docs["config.toml"] = (await asyncio.to_thread(masked_config, cfg.path, masker)).encode("utf-8")
    return part


async def _polling(work: Awaitable[Any], poll: Callable[[], None]) -> Any:
    """Await `work`, calling `poll` every POLL_S meanwhile and once at the end: a cut in a thread advances
    counters that a progress bar reads (the cut may scan long before its first entry in the window)."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=POLL_S)
        poll()
        if done:
            return task.result()


async def _local_alarms(cfg: Config, part: NodePart) -> list[dict[str, Any]]:
    if cfg.alarms.store == "sqlite" and not (cfg.node.state_dir / SQLITE_FILE).exists():
        part.notes.append(f"{part.name}: no alarm store yet ({cfg.node.state_dir / SQLITE_FILE})")
        return []
    try:
        store = await asyncio.to_thread(open_store, cfg.alarms.store, cfg.node.state_dir)
        try:
            rows = await asyncio.to_thread(store.history)
        finally:
            await asyncio.to_thread(store.close)
    except HasyncError as exc:
        part.warnings.append(f"{part.name}: alarms not included: {exc.message}")
        return []
    return [a.to_json(diagnosis=True) for a in rows]


async def _local_status(cfg: Config, part: NodePart) -> dict[str, Any]:
    async with AgentClient(cfg.local_url(), cfg.token, cfg.peer.timeout_s, name="local") as me:
        try:
            return await me.status_document(timeout=max(30.0, cfg.peer.timeout_s))
        except PeerError as exc:
            part.notes.append(f"{part.name}: status from the config only, its agent did not answer: {exc.message}")
    return {
        "node": cfg.node.name,
        "hostname": cfg.node.hostname,
        "role": part.role,
        "peer": cfg.peer.name,
        "agent_running": False,
    }
