"""The replication routes: what the standby fetches from the active, and a sync now on the standby.

Which of them a node answers is its role's to say: the active's routes on the standby, and sync on
the active, answer 409 `wrong_role` (the role object, `hasync.node.role`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from functools import partial
from typing import Any

from aiohttp import web

from hasync import clock
from hasync.agent.inputs import field, query_float, query_int
from hasync.agent.routes.body import dir_name, msgpack_body
from hasync.errors import BadRequest, PathRefused, PeerStarting
from hasync.halog import kv
from hasync.node import Node
from hasync.peer.protocol import API, FRAMES, MSGPACK, dec_path, pack

log = logging.getLogger("hasync.agent")


# Answered by the role object: refused (503 starting) while it is being replaced (agent/app.py).
PATHS = frozenset(f"{API}/{p}" for p in ("info", "tree", "changes", "files", "sync"))


def add_routes(app: web.Application, node: Node) -> None:
    r = app.router
    r.add_get(f"{API}/info", partial(info, node))  # identity, role, change seq, Merkle roots
    r.add_post(f"{API}/tree", partial(tree, node))  # listings of directories, with subdir hashes
    r.add_get(f"{API}/changes", partial(changes, node))  # long-poll change feed after a seq
    r.add_post(f"{API}/files", partial(files, node))  # framed stream of file contents
    r.add_post(f"{API}/sync", partial(sync, node))  # standby: reconcile now, NDJSON progress


async def info(node: Node, request: web.Request) -> web.Response:
    body: dict[str, Any] = {**node.identity(), "time": clock.now()}
    since = query_int(request, "since", 0) if "since" in request.query else None
    body.update(node.role.info(request.query.get("owner"), since))
    return web.Response(body=pack(body), content_type=MSGPACK)


async def tree(node: Node, request: web.Request) -> web.Response:
    req = await msgpack_body(node, request)
    name = dir_name(node, req, BadRequest)
    dirs = [dec_path(p, allow_root=True) for p in field(req, "dirs", list)]
    return web.Response(body=pack(node.role.listing(name, dirs)), content_type=MSGPACK)


async def changes(node: Node, request: web.Request) -> web.Response:
    since = query_int(request, "since", 0)
    wait = min(max(query_float(request, "wait", 0.0), 0.0), 60.0)
    body = await node.role.changes(request.query.get("instance", ""), since, wait)
    return web.Response(body=pack(body), content_type=MSGPACK)


async def files(node: Node, request: web.Request) -> web.StreamResponse:
    req = await msgpack_body(node, request)
    name = dir_name(node, req, PathRefused)
    paths = [dec_path(p) for p in field(req, "paths", list)]
    resume: dict[str, tuple[int, bytes]] = {}
    for item in field(req, "resume", list, []):  # [path, offset, BLAKE3 of the first offset bytes]
        try:
            raw, offset, digest = item
        except (TypeError, ValueError):
            raise PathRefused(f"malformed resume entry {item!r:.80}") from None
        if not isinstance(offset, int) or offset <= 0 or not isinstance(digest, bytes) or len(digest) != 32:
            raise PathRefused(f"malformed resume entry {item!r:.80}")
        resume[dec_path(raw)] = (offset, digest)
    side = node.role.serving()
    resp = web.StreamResponse(headers={"Content-Type": FRAMES})
    await resp.prepare(request)
    async for chunk in side.stream_files(name, paths, resume):
        await resp.write(chunk)
    await resp.write_eof()
    return resp


async def sync(node: Node, request: web.Request) -> web.StreamResponse:
    side = node.role.pulling()
    log.info("sync requested %s", kv(by=request.remote))
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    # The watcher keeps the local tree current: no rescan, so "nothing changed" costs next to nothing.
    task = asyncio.create_task(side.reconcile(progress=queue.put_nowait))
    while not task.done():
        getter = asyncio.ensure_future(queue.get())
        # A keep-alive at least every 5 s, so that the client can time out a hung agent.
        await asyncio.wait({getter, task}, timeout=5.0, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            await resp.write(json.dumps(getter.result()).encode() + b"\n")
        else:
            getter.cancel()
            if not task.done():
                await resp.write(b'{"event": "alive"}\n')
    result = task.result()
    final = {
        "event": "result",
        **result.to_json(),
        "peer_starting": isinstance(side.peer_error, PeerStarting),  # sync --once waits and asks again
    }
    await resp.write(json.dumps(final).encode() + b"\n")
    await resp.write_eof()
    return resp
