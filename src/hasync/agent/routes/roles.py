"""The role routes: `hasync role set`, `hasync switchover`, and the peer's steps of a hand-over.

`POST /v1/role` and `POST /v1/switchover` answer the role change's report (hasync.node.switch), `ok`
false when it was refused (the CLI exits 1); `POST /v1/handover` is the promoting peer's: freeze, thaw,
demote. One role change runs at a time on a node.
"""

from __future__ import annotations

from functools import partial

from aiohttp import web

from hasync.agent.inputs import field
from hasync.agent.routes.body import json_body
from hasync.node import Node
from hasync.node.switch import Switch
from hasync.peer.protocol import API

SWITCH = web.AppKey("switch", Switch)


def add_routes(app: web.Application, node: Node) -> None:
    app[SWITCH] = switch = Switch(node)
    app.on_cleanup.append(lambda app: switch.stop())
    r = app.router
    r.add_post(f"{API}/role", partial(role_set, switch))  # `hasync role set active|standby` (external mode)
    r.add_post(f"{API}/switchover", partial(switchover, switch))  # `hasync switchover`: the standby takes over
    r.add_post(f"{API}/handover", partial(handover, switch))  # the promoting peer's steps


async def role_set(switch: Switch, request: web.Request) -> web.Response:
    req = await json_body(switch.node, request)
    rep = await switch.role_set(field(req, "role", str), field(req, "force", bool, False))
    return web.json_response(rep.to_json())


async def switchover(switch: Switch, request: web.Request) -> web.Response:
    req = await json_body(switch.node, request)
    doc = await switch.switchover(field(req, "force", bool, False), field(req, "forwarded", bool, False))
    return web.json_response(doc)


async def handover(switch: Switch, request: web.Request) -> web.Response:
    req = await json_body(switch.node, request)
    return web.json_response(await switch.handover(field(req, "step", str), req))
