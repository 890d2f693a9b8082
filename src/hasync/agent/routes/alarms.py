"""The alarm routes: this node's alarms (and the pair's), and keeping a diagnosis with its alarm."""

from __future__ import annotations

from functools import partial

from aiohttp import web

from hasync.agent.inputs import field
from hasync.agent.routes.body import json_body
from hasync.node import Node
from hasync.peer.protocol import API


def add_routes(app: web.Application, node: Node) -> None:
    r = app.router
    r.add_get(f"{API}/alarms", partial(alarms, node))  # this node's alarms (?all=1 with cleared, ?pair=1 the peer's)
    r.add_post(f"{API}/alarms/diagnosis", partial(store_diagnosis, node))  # keep a diagnosis with its alarm


async def alarms(node: Node, request: web.Request) -> web.Response:
    include_cleared = request.query.get("all") == "1"
    return web.json_response(await node.alarm_docs(include_cleared, with_peer=request.query.get("pair") == "1"))


async def store_diagnosis(node: Node, request: web.Request) -> web.Response:
    body = await json_body(node, request)
    fingerprint, raised_at = field(body, "fingerprint", str), field(body, "raised_at", str)
    kept = await node.keep_diagnosis(fingerprint, raised_at, field(body, "diagnosis", dict))
    return web.json_response({"stored": kept})
