"""The Node: its role replaced at run time (the seam of a switchover), on real sync dirs."""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from ephemeral_port_reserve import reserve

import hasync.node
from hasync import config, hashcache
from hasync.agent.app import Agent
from hasync.config import Config, ensure_dirs
from hasync.demo import Pair, write_pair
from hasync.errors import Starting, WrongRole
from hasync.node import Node
from hasync.peer.client import AgentClient
from hasync.replication.active import ActiveSide
from hasync.replication.standby import StandbySide


def load(path: Path) -> Config:
    cfg = config.load(path)
    ensure_dirs(cfg)
    return cfg


def make_pair(base: Path) -> Pair:
    return write_pair(base, port_a=reserve("127.0.0.1"), port_b=reserve("127.0.0.1"))


async def until(pred: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll `pred` in the event loop until it holds (the agents run in this loop)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def role(node: Node) -> str:
    """The node's role name, read afresh (a replaced role is another object)."""
    return node.role.name


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def test_replace_role_makes_the_node_the_other_role(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    (pair.data_a / "conf" / "a.yaml").write_text("a: 1\n")
    cfg = load(pair.config_a)

    async def scenario() -> None:
        node = Node(cfg)
        assert node.role.name == "active"
        await node.start()
        try:
            old_side = node.role.side
            assert isinstance(old_side, ActiveSide) and node.ready
            assert old_side.watcher_health().watched_dirs > 0
            assert (await node.status_doc(brief=True))["role"] == "active"
            assert "roots" in node.role.info(None, None)
            with pytest.raises(WrongRole):
                node.role.pulling()  # sync runs on the standby

            await node.become("standby", 1, "test")

            assert role(node) == "standby"
            doc = await node.status_doc(brief=True)
            assert doc["role"] == "standby" and "pending" in doc  # the standby's own view
            assert isinstance(node.role.pulling(), StandbySide)
            with pytest.raises(WrongRole):
                node.role.serving()
            with pytest.raises(WrongRole):
                await node.role.changes("", 0, 0.0)
            assert node.role.info(None, None)["seq"] == 0  # a standby's roots, no change feed
            assert node.keeper is not None and node.keeper.duty.owner and node.keeper.duty.name == "standby"
            assert node.keeper.peer is node.role.peer
            assert node.auditor.side is node.role.side
            metrics = node.metrics.render().decode()
            assert 'hasync_role{node="node-a",role="standby"} 1.0' in metrics
            assert 'role="active"' not in metrics
            # The old side is stopped (its watches removed), the new one started (its watchers open).
            assert old_side.watcher_health().watched_dirs == 0
            assert node.role.side.watcher_health().state != "off"

            await node.become("active", 2, "test")
            assert role(node) == "active" and node.ready
            assert (await node.status_doc(brief=True))["role"] == "active"
            assert node.role.serving() is node.role.side
        finally:
            await node.stop()
            await node.close()

    run(scenario())


def test_a_role_not_started_is_starting_not_wrong(tmp_path: Path) -> None:
    """Replaced on a node that does not run (a one-off check): the new role is made, not started."""
    pair = make_pair(tmp_path)
    cfg = load(pair.config_b)

    async def scenario() -> None:
        node = Node(cfg)
        assert role(node) == "standby"
        try:
            await node.replace_role("active")
            assert node.role.name == "active" and not node.ready
            with pytest.raises(Starting):
                node.role.serving()
        finally:
            await node.close()

    run(scenario())


def test_switched_pair_replicates_the_other_way(tmp_path: Path) -> None:
    """Two nodes served by their agents in this process: after both roles are replaced, node-b's
    changes reach node-a, and each node's routes answer as its new role."""
    pair = make_pair(tmp_path)
    (pair.data_a / "conf" / "one.txt").write_text("from a\n")
    cfg_a, cfg_b = load(pair.config_a), load(pair.config_b)

    async def scenario() -> None:
        node_a, node_b = Node(cfg_a), Node(cfg_b)
        started: list[str] = []
        agents = [
            asyncio.create_task(Agent(n).run(ready=partial(started.append, n.cfg.node.name))) for n in (node_a, node_b)
        ]
        try:
            await until(lambda: len(started) == 2, "both agents to start")
            one = pair.data_b / "conf" / "one.txt"
            await until(lambda: one.exists() and one.read_text() == "from a\n", "node-b to fetch one.txt")

            await node_a.become("standby", 1, "test")
            await node_b.become("active", 1, "test")

            (pair.data_b / "conf" / "two.txt").write_text("from b\n")
            two = pair.data_a / "conf" / "two.txt"
            await until(lambda: two.exists() and two.read_text() == "from b\n", "node-a to fetch two.txt")
            async with AgentClient(cfg_b.peer_url(), cfg_b.token, 5.0, "node-a") as to_a:
                assert (await to_a.peer_status()).is_standby
                assert (await to_a.peer_info()).role == "standby"
            async with AgentClient(cfg_a.peer_url(), cfg_a.token, 5.0, "node-b") as to_b:
                assert (await to_b.peer_info()).is_active
                with pytest.raises(Exception, match="active node"):
                    await to_b.json("POST", "/v1/sync", {})
        finally:
            for n in (node_a, node_b):
                n.stopping.set()
            await asyncio.gather(*agents)

    run(scenario())


def test_the_node_knows_nothing_of_http_serving() -> None:
    """The CLI runs a check over a Node without the web app: node.py imports neither."""
    tree = ast.parse(Path(hasync.node.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "hasync.node.table" in imported  # the scan sees the imports
    assert not {m for m in imported if m.startswith(("aiohttp", "hasync.agent"))}


def test_a_promoted_standby_scans_with_its_own_trees_not_the_hash_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the way to serving, the new active's first scan reuses the standby's trees (replication.base
    `Side.adopt`): the hash cache files they were just saved to are not read again."""
    pair = make_pair(tmp_path)
    (pair.data_a / "conf" / "a.yaml").write_text("a: 1\n")
    cfg = load(pair.config_a)
    loaded: list[Path] = []

    async def scenario() -> None:
        node = Node(cfg)
        await node.start()
        try:
            await node.become("standby", 1, "test")
            standby = node.role.side.trees["conf"]
            assert standby is not None
            want = standby.get("a.yaml")
            monkeypatch.setattr(hashcache, "load", lambda path: loaded.append(path))
            await node.become("active", 2, "test")
            assert role(node) == "active" and node.ready
            tree = node.role.side.trees["conf"]
            got = None if tree is None else tree.get("a.yaml")
            assert want is not None and got is not None and got.digest == want.digest
        finally:
            await node.stop()
            await node.close()

    run(scenario())
    assert loaded == []
