"""The epoch rules on the wire: the peer client's `_fenced` (over the in-memory transport) and the agent's
`_fence` middleware and `_stamp` (in process, aiohttp's test server)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgpack
import pytest
from aiohttp.test_utils import TestClient, TestServer

from hasync import config
from hasync.agent.app import Agent
from hasync.config import Config, ensure_dirs
from hasync.demo import write_pair
from hasync.errors import MalformedAnswer, StaleEpoch
from hasync.node import Node
from hasync.peer.client import AgentClient
from hasync.peer.transport import MemoryRequest, MemoryResponse, MemoryTransport
from hasync.roles.state import EPOCH_HEADER, ROLE_HEADER, Fence, RoleState, load

INFO = {"role": "active", "node": "node-a", "instance": "i", "seq": 1, "roots": {}, "with_owner": False}


def cfg_of(tmp_path: Path, node: str) -> Config:
    pair = write_pair(tmp_path)
    cfg = config.load(pair.config_a if node == "a" else pair.config_b)
    ensure_dirs(cfg)
    return cfg


def client(fence: Fence, headers: dict[str, str], requests: list[MemoryRequest]) -> AgentClient:
    async def handler(req: MemoryRequest) -> MemoryResponse:
        requests.append(req)
        return MemoryResponse(200, msgpack.packb(INFO), headers=headers)

    return AgentClient("http://peer:1", "t", 5.0, "node-a", transport=MemoryTransport(handler), fence=fence)


def ask(c: AgentClient) -> Any:
    async def go() -> Any:
        try:
            return await c.peer_info()
        finally:
            await c.close()

    return asyncio.run(go())


def test_every_request_carries_the_nodes_epoch_and_role(tmp_path: Path) -> None:
    cfg = cfg_of(tmp_path, "b")
    fence = Fence(cfg)
    fence.set("standby", 3, "test")
    requests: list[MemoryRequest] = []
    info = ask(client(fence, {EPOCH_HEADER: "3", ROLE_HEADER: "active"}, requests))
    assert info.is_active
    assert requests[0].headers[EPOCH_HEADER] == "3" and requests[0].headers[ROLE_HEADER] == "standby"


def test_a_standby_refuses_the_answer_of_a_stale_active(tmp_path: Path) -> None:
    fence = Fence(cfg_of(tmp_path, "b"))
    fence.set("standby", 5, "test")
    with pytest.raises(StaleEpoch, match="older than epoch 5"):
        ask(client(fence, {EPOCH_HEADER: "4", ROLE_HEADER: "active"}, []))
    assert StaleEpoch("x").cause.value == "sync_error"


def test_an_active_answered_by_a_newer_active_becomes_standby_and_the_call_fails(tmp_path: Path) -> None:
    cfg = cfg_of(tmp_path, "a")
    fence = Fence(cfg)
    told: list[RoleState] = []
    fence.on_superseded = told.append
    with pytest.raises(StaleEpoch, match="becomes standby"):
        ask(client(fence, {EPOCH_HEADER: "2", ROLE_HEADER: "active"}, []))
    assert (load(cfg).role, load(cfg).epoch) == ("standby", 2) and len(told) == 1


@pytest.mark.parametrize(
    "headers",
    [{EPOCH_HEADER: "x", ROLE_HEADER: "active"}, {EPOCH_HEADER: "1", ROLE_HEADER: "master"}],
    ids=["epoch", "role"],
)
def test_a_malformed_epoch_in_an_answer_is_a_malformed_answer(tmp_path: Path, headers: dict[str, str]) -> None:
    fence = Fence(cfg_of(tmp_path, "b"))
    with pytest.raises(MalformedAnswer):
        ask(client(fence, headers, []))
    assert fence.epoch == 0


def test_an_answer_without_epoch_headers_is_left_to_its_status(tmp_path: Path) -> None:
    fence = Fence(cfg_of(tmp_path, "b"))
    assert ask(client(fence, {}, [])).is_active


# -- the server side -------------------------------------------------------------------------------------


def test_the_agent_stamps_authenticated_answers_only_and_adopts_a_higher_epoch(tmp_path: Path) -> None:
    cfg = cfg_of(tmp_path, "b")  # the standby

    async def scenario() -> None:
        node = Node(cfg)
        async with TestClient(TestServer(Agent(node).app())) as http:
            auth = {"Authorization": f"Bearer {cfg.token}"}
            r = await http.get("/v1/status?brief=1", headers=auth)
            assert r.status == 200 and r.headers[EPOCH_HEADER] == "0" and r.headers[ROLE_HEADER] == "standby"
            r = await http.get("/v1/status?brief=1")
            assert r.status == 401 and EPOCH_HEADER not in r.headers  # nothing told without the token
            r = await http.get("/healthz")
            assert EPOCH_HEADER not in r.headers
            r = await http.get("/v1/status?brief=1", headers={**auth, EPOCH_HEADER: "7", ROLE_HEADER: "active"})
            assert r.status == 200 and r.headers[EPOCH_HEADER] == "7"
            assert node.fence.epoch == 7 and load(cfg).epoch == 7
            for bad in ("-1", "1e3", "9" * 20, "\uff17"):
                r = await http.get("/v1/status", headers={**auth, EPOCH_HEADER: bad, ROLE_HEADER: "active"})
                assert r.status == 400 and (await r.json())["error"]["code"] == "bad_request"
            assert node.fence.epoch == 7
        await node.close()

    asyncio.run(scenario())


def test_a_superseded_active_serves_a_newer_actives_request_as_a_standby(tmp_path: Path) -> None:
    cfg = cfg_of(tmp_path, "a")  # the active, not started: its role object stays until the node swaps it

    async def scenario() -> None:
        node = Node(cfg)
        async with TestClient(TestServer(Agent(node).app())) as http:
            auth = {"Authorization": f"Bearer {cfg.token}"}
            r = await http.get("/v1/info", headers={**auth, EPOCH_HEADER: "3", ROLE_HEADER: "active"})
            # The role is kept as standby at once; the replication routes wait for the swap (503 starting).
            assert r.status == 503 and json.loads(await r.text())["error"]["code"] == "starting"
            assert r.headers[ROLE_HEADER] == "standby" and r.headers[EPOCH_HEADER] == "3"
            assert (load(cfg).role, load(cfg).epoch) == ("standby", 3)
        await node.close()

    asyncio.run(scenario())
