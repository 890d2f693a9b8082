"""The peer's part of a bundle, through its agent: clock offset, cut log (a frame stream), alarms, status, config."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from hasync.clock import iso
from hasync.collect.offset import measure_offset
from hasync.collect.part import NodePart, ProgressFn, json_bytes
from hasync.collect.spool import LogSpool
from hasync.collect.window import Window
from hasync.config import Config
from hasync.errors import PeerError
from hasync.masking import Masker
from hasync.peer.client import AgentClient
from hasync.peer.protocol import API, L_DATA, L_DONE, L_ERR, L_PROGRESS, unpack


async def stream_peer_log(
    peer: AgentClient,
    start: datetime,
    end: datetime,
    on_data: Callable[[bytes], None],
    *,
    levels: Iterable[str] = (),
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The peer's HA log entries in [start, end] (its clock), masked, handed to `on_data` piece by piece
    (pieces split anywhere, even inside a character); returns the peer's cut stats. `levels` (e.g.
    ``("ERROR", "WARN")``) keeps only entries of those levels. `logcut.parse_lines` reads the text back."""
    params = {"start": start.isoformat(), "end": end.isoformat()}
    if levels:
        params["levels"] = ",".join(levels)
    # The peer sends progress at least every second: a long quiet spell means it hangs.
    frames = peer.frames(
        "GET", f"{API}/collect/logs", end=L_DONE, params=params, read_timeout_s=max(30.0, 3 * peer.timeout_s)
    )
    async for kind, payload in frames:
        if kind == L_DATA:
            on_data(payload)
        elif kind == L_PROGRESS:
            if progress is not None:
                p = unpack(payload)
                progress(int(p["read"]), int(p["total"]))
        elif kind == L_DONE:
            stats: dict[str, Any] = unpack(payload)
            return stats
        elif kind == L_ERR:
            raise PeerError(f"{peer.name} agent could not cut its log: {unpack(payload)['message']}")
        else:
            raise PeerError(f"{peer.name} agent sent an unknown log frame {kind!r}")
    raise PeerError(f"{peer.name} agent ended its log stream without its stats")


async def fetch_peer_logs(
    peer: AgentClient, window: Window, spool: LogSpool, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Stream the peer's cut of `window` (on its clock) into `spool`; return the peer's cut stats."""
    try:
        return await stream_peer_log(peer, window.start, window.end, spool.feed_bytes, progress=progress)
    finally:
        spool.close_input()


async def peer_part(cfg: Config, window: Window, spool_dir: Path, masker: Masker, progress: ProgressFn) -> NodePart:
    """The peer's part through its agent; when the peer cannot be reached, a part that says why."""
    part = NodePart(cfg.peer.name, False, window, hostname=cfg.peer.hostname)
    async with AgentClient(cfg.peer_url(), cfg.token, cfg.peer.timeout_s, cfg.peer.name) as peer:
        try:
            part.offset, info = await measure_offset(peer)
        except PeerError as exc:
            part.reachable = False
            part.warnings.append(
                f"peer {cfg.peer.name} not collected ({exc.cause.value}): {exc.message}; "
                f"the bundle holds {cfg.node.name} only"
            )
            return part
        part.reachable = True
        part.hostname, part.role = info.get("hostname", part.hostname), info.get("role")
        part.window = window.shifted(part.offset.applied_s)
        part.notes.append(
            f"{part.name}: clock {part.offset.offset_s:+.4f} s from {cfg.node.name}'s "
            f"(±{part.offset.rtt_s / 2:.4f} s), window shifted by {part.offset.applied_s:+.3f} s: its log was cut "
            f"in {iso(part.window.start, 'milliseconds')} .. {iso(part.window.end, 'milliseconds')} of its clock"
        )
        part.spool = spool = LogSpool(spool_dir, masker)
        label = f"{part.name} log"
        try:
            stats = await fetch_peer_logs(peer, part.window, spool, lambda d, t: progress(label, d, t))
            part.log = {k: stats.get(k) for k in ("files_read", "files_skipped", "errors", "entries", "lines")}
            part.log["truncated_entries"] = stats.get("truncated_entries", 0)
            for err in stats.get("errors", []):
                part.warnings.append(f"{part.name}: HA log {err}")
        except PeerError as exc:
            part.log = {"error": exc.message}
            part.warnings.append(
                f"{part.name}: HA log incomplete, the stream broke after {spool.size} bytes: {exc.message}"
            )
        for name, fetch in (
            ("alarms.json", lambda: peer.json("GET", f"{API}/alarms?all=1", timeout=max(30.0, peer.timeout_s))),
            ("status.json", lambda: peer.status_document(timeout=max(30.0, peer.timeout_s))),
        ):
            try:
                part.docs[name] = json_bytes(masker.json(await fetch()))
            except PeerError as exc:
                part.warnings.append(f"{part.name}: {name} not included: {exc.message}")
        try:
            conf = await peer.json("GET", f"{API}/collect/config")
            part.docs["config.toml"] = masker.text(str(conf["text"])).encode("utf-8")
        except (PeerError, KeyError, TypeError) as exc:
            part.warnings.append(f"{part.name}: config.toml not included: {exc}")
    return part
