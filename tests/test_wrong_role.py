"""A request for the other role (docs/protocol.md section 7): `409 wrong_role`, never a 500 or an answer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from hasync import config
from hasync.agent.app import Agent
from hasync.node import Node
from hasync.peer.protocol import MSGPACK, pack
from pairlib import PairEnv

# Served only by the active: the standby answers 409. Served only by the standby: the active answers 409.
# (`/v1/tree` is served by both: a standby lists its own copy, for a promotion when no node is active.)
ACTIVE_ONLY = [
    ("GET", "/v1/changes?since=0", None),
    ("POST", "/v1/files", pack({"dir": "conf", "paths": [b"a.yaml"]})),
]
STANDBY_ONLY = [("POST", "/v1/sync", b"{}")]


def ask(cfg_path: Path, method: str, path: str, body: bytes | None) -> tuple[int, dict[str, Any]]:
    cfg = config.load(cfg_path)

    async def run() -> tuple[int, dict[str, Any]]:
        async with TestClient(TestServer(Agent(Node(cfg)).app())) as client:
            headers = {"Authorization": f"Bearer {cfg.token}", "Content-Type": MSGPACK}
            resp = await client.request(method, path, data=body, headers=headers)
            return resp.status, await resp.json()

    return asyncio.run(run())


@pytest.mark.parametrize(("method", "path", "body"), ACTIVE_ONLY, ids=lambda x: x if isinstance(x, str) else "")
def test_the_standby_refuses_what_only_the_active_serves(
    make_pair: Callable[..., PairEnv], method: str, path: str, body: bytes | None
) -> None:
    env = make_pair()
    status, doc = ask(env.pair.config_b, method, path, body)
    assert (status, doc["error"]["code"]) == (409, "wrong_role"), doc
    assert "standby" in doc["error"]["message"]


@pytest.mark.parametrize(("method", "path", "body"), STANDBY_ONLY, ids=lambda x: x if isinstance(x, str) else "")
def test_the_active_refuses_what_only_the_standby_serves(
    make_pair: Callable[..., PairEnv], method: str, path: str, body: bytes | None
) -> None:
    env = make_pair()
    status, doc = ask(env.pair.config_a, method, path, body)
    assert (status, doc["error"]["code"]) == (409, "wrong_role"), doc
    assert doc["error"]["message"] == "node-a is the active node: sync runs on the standby"
