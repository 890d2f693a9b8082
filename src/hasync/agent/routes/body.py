"""Request bodies read within the node's limits, and the sync dir a body names."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hasync.agent.inputs import field, json_object, msgpack_object
from hasync.errors import HasyncError
from hasync.halog import clip
from hasync.node import Node


async def msgpack_body(node: Node, request: web.Request) -> dict[str, Any]:
    return await msgpack_object(request, node.cfg.limits.body_timeout_s)


async def json_body(node: Node, request: web.Request) -> dict[str, Any]:
    return await json_object(request, node.cfg.limits.body_timeout_s)


def dir_name(node: Node, req: dict[str, Any], refusal: type[HasyncError]) -> str:
    """The body's `dir`, a configured sync dir's name (else `refusal`)."""
    name = field(req, "dir", str)
    try:
        node.cfg.sync_dir(name)
    except KeyError:
        raise refusal(f"no sync dir named {clip(name, 80)!r}") from None
    return name
