"""The routes a collecting peer uses for the fault-information bundle (SPEC §9): clock, cut log, config.

All of them sit behind the agent's authentication middleware. Alarms and status come
from the existing ``GET /v1/alarms?all=1`` and ``GET /v1/status``.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from aiohttp import web

from hasync import __version__, clock
from hasync.collect import cut_json, masked_config, render
from hasync.halog import utc_offset
from hasync.logcut import CutStats, iter_window, window_time
from hasync.node import Node
from hasync.peer.frames import frame
from hasync.peer.protocol import API, FRAME_DATA_MAX, FRAMES, L_DATA, L_DONE, L_ERR, L_PROGRESS, pack

LEVEL_ALIASES = {"WARNING": "WARN", "CRITICAL": "ERROR"}  # as halog writes them
HEARTBEAT_S = 1.0  # a progress frame at least this often, so a long scan before the window never looks dead


def add_routes(app: web.Application, node: Node) -> None:
    r = app.router
    r.add_get(f"{API}/collect/info", partial(info, node))  # identity and wall clock, for the offset measurement
    r.add_get(f"{API}/collect/logs", partial(logs, node))  # HA log entries in ?start=&end=[&levels=], masked, framed
    r.add_get(f"{API}/collect/config", partial(config, node))  # this node's config file, secrets masked


async def info(node: Node, request: web.Request) -> web.Response:
    doc: dict[str, Any] = {
        **node.identity(),
        "time": clock.now(),
        "utc_offset": utc_offset(),
        "version": __version__,
    }
    return web.json_response(doc)


async def config(node: Node, request: web.Request) -> web.Response:
    cfg = node.cfg
    text = await asyncio.to_thread(masked_config, cfg.path, cfg.masker())
    return web.json_response({"file": cfg.path.name, "text": text})


async def logs(node: Node, request: web.Request) -> web.StreamResponse:
    start = window_time(request.query.get("start"), "start")
    end = window_time(request.query.get("end"), "end")
    # ?levels=ERROR,WARN: only those entries (the diagnosis wants no more).
    wanted = (v.strip() for v in request.query.get("levels", "").upper().split(","))
    levels = {LEVEL_ALIASES.get(v, v) for v in wanted if v}
    cfg = node.cfg
    stats = CutStats()
    records = iter_window(cfg.node.log_dir, start, end, stats=stats)
    if levels:
        records = (r for r in records if r.level in levels)
    batches = render(records, cfg.masker(), cfg.node.name)
    resp = web.StreamResponse(headers={"Content-Type": FRAMES})
    await resp.prepare(request)

    def progress() -> bytes:
        return frame(L_PROGRESS, pack({"read": stats.bytes_read, "total": stats.bytes_total}))

    task: asyncio.Future[str | None] | None = None
    try:
        while True:
            # The cut reads files: in a thread, one batch at a time, so memory stays at one batch.
            task = asyncio.ensure_future(asyncio.to_thread(next, batches, None))
            while not (await asyncio.wait({task}, timeout=HEARTBEAT_S))[0]:
                await resp.write(progress())
            chunk = task.result()
            task = None
            if chunk is None:
                break
            data = chunk.encode("utf-8")
            for i in range(0, len(data), FRAME_DATA_MAX):
                await resp.write(frame(L_DATA, data[i : i + FRAME_DATA_MAX]))
            await resp.write(progress())
        await resp.write(frame(L_DONE, pack(cut_json(stats))))
    except (ConnectionError, asyncio.CancelledError):
        raise  # the collector went away: nothing to tell it
    except Exception as exc:  # the cut failed: say so in the stream, the headers are long sent
        await resp.write(frame(L_ERR, pack({"message": f"{type(exc).__name__}: {exc}"})))
    finally:
        if task is not None:
            await asyncio.wait({task})  # a generator cannot be closed while a thread runs it
        await asyncio.to_thread(batches.close)
    await resp.write_eof()
    return resp
