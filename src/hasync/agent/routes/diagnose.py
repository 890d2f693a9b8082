"""The diagnosis routes: one fact or fix on this node (for a peer's procedure), and the whole procedure."""

from __future__ import annotations

import asyncio
from functools import partial

from aiohttp import web

from hasync.agent.inputs import as_object, field
from hasync.agent.routes.body import json_body
from hasync.diagnose.nodes import path_args, run_op
from hasync.node import Node
from hasync.peer.protocol import API


def add_routes(app: web.Application, node: Node) -> None:
    r = app.router
    r.add_post(f"{API}/diag", partial(diag, node))  # one diagnosis fact or fix on this node
    r.add_post(f"{API}/diagnose", partial(diagnose, node))  # the whole procedure, run by this agent


async def diag(node: Node, request: web.Request) -> web.Response:
    cfg = node.cfg
    body = await json_body(node, request)
    op = field(body, "op", str)
    del body["op"]
    paths = path_args(cfg, body.get("paths")) if op in ("stat", "delete_junk") else []  # PathRefused: 400
    result = await asyncio.to_thread(run_op, cfg, op, body)
    if op == "delete_junk":
        # Know about the deletions now, not when their events arrive: a recheck follows at once.
        known = {d.name: d.path for d in cfg.sync.dirs}
        await node.role.side.refresh(known[d] / p for d, p in paths if d in known)
    return web.json_response(result)


async def diagnose(node: Node, request: web.Request) -> web.Response:
    body = await json_body(node, request)
    fix = field(body, "fix", bool, False)
    alarm = body.get("alarm")
    if alarm is not None:
        alarm = as_object(alarm, "alarm")
        field(alarm, "fingerprint", str)
        field(alarm, "raised_at", str)
    return web.json_response(await node.run_diagnosis(fix, alarm))
