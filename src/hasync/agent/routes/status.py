"""The status routes: liveness, metrics, the status document, and a check or an audit run now."""

from __future__ import annotations

import logging
from functools import partial

from aiohttp import web

from hasync.agent.inputs import field
from hasync.agent.routes.body import json_body
from hasync.metrics import CONTENT_TYPE
from hasync.node import Node
from hasync.peer.protocol import API

log = logging.getLogger("hasync.agent")

FAILOVER = f"{API}/failover"
PUBLIC = frozenset({"/healthz", FAILOVER})  # answered without a token: they tell nothing but a state


def add_routes(app: web.Application, node: Node) -> None:
    r = app.router
    r.add_get("/healthz", healthz)  # liveness probe, no auth, no details
    r.add_get("/metrics", partial(prometheus, node))  # Prometheus text format
    r.add_get(FAILOVER, partial(failover, node))  # for HTTP health checkers: 200 safe, 503 not; no auth
    r.add_get(f"{API}/status", partial(status, node))  # this node's sync state, as JSON
    r.add_post(f"{API}/check", partial(check_now, node))  # one sync check now, recorded ({"deep": true})
    r.add_post(f"{API}/audit", partial(audit_now, node))  # a full audit pass of this node now, its findings


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def prometheus(node: Node, request: web.Request) -> web.Response:
    return web.Response(body=node.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


async def failover(node: Node, request: web.Request) -> web.Response:
    """200 when a switchover now would lose nothing, else 503; the body is a fixed word, never the
    reason (it is unauthenticated: `status` and `check --failover` give the reason)."""
    try:
        safe = (await node.failover()).safe
    except Exception:  # whatever happens, the answer is "not safe" and tells nothing more
        log.exception("failover verdict failed")
        safe = False
    if safe:
        return web.Response(text="safe\n")
    return web.Response(status=503, text="not safe\n")


async def status(node: Node, request: web.Request) -> web.Response:
    return web.json_response(await node.status_doc(brief=request.query.get("brief") == "1"))


async def check_now(node: Node, request: web.Request) -> web.Response:
    body = await json_body(node, request)
    if field(body, "deep", bool, False):
        return web.json_response(await node.deep_check())
    return web.json_response((await node.run_check()).to_json())


async def audit_now(node: Node, request: web.Request) -> web.Response:
    """This node's part of a deep check: its findings are reported by the asking node's check."""
    return web.json_response(await node.audit_now())
