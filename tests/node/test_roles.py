"""The roles: the providers (hasync.roles), the role table and what each role object answers or refuses
(hasync.node)."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from hasync import config
from hasync.check import ActiveCheck, StandbyCheck
from hasync.config import Config, ensure_dirs
from hasync.demo import write_pair
from hasync.errors import Starting, WrongRole
from hasync.node.active import ActiveRole
from hasync.node.role import ROLES
from hasync.node.standby import StandbyRole
from hasync.node.table import make_role
from hasync.replication.active import ActiveSide
from hasync.replication.standby import StandbySide
from hasync.roles import node_role
from hasync.roles.state import Fence

SRC = Path(__file__).resolve().parents[2] / "src" / "hasync"
ROLE_TYPES = {"Role", "ActiveRole", "StandbyRole", "Side", "ActiveSide", "StandbySide", "ActiveCheck", "StandbyCheck"}


@pytest.fixture
def configs(tmp_path: Path) -> tuple[Config, Config]:
    pair = write_pair(tmp_path)
    (pair.data_a / "conf" / "a.yaml").write_text("a: 1\n")
    cfgs = config.load(pair.config_a), config.load(pair.config_b)
    for cfg in cfgs:
        ensure_dirs(cfg)
    return cfgs


def test_node_role_follows_the_provider(configs: tuple[Config, Config]) -> None:
    a, b = configs
    assert (node_role(a), node_role(b)) == ("active", "standby")
    switched = b.model_copy(update={"role": b.role.model_copy(update={"active": "node-b"})})
    assert node_role(switched) == "active"


def test_the_table_holds_each_role_under_its_name(configs: tuple[Config, Config]) -> None:
    a, _ = configs
    assert ROLES == {"active": ActiveRole, "standby": StandbyRole}
    active, standby = make_role("active", a, Fence(a)), make_role("standby", a, Fence(a))
    assert isinstance(active, ActiveRole) and isinstance(active.side, ActiveSide)
    assert isinstance(active.check, ActiveCheck) and active.check.client is active.peer
    assert isinstance(standby, StandbyRole) and isinstance(standby.side, StandbySide)
    assert isinstance(standby.check, StandbyCheck)
    assert standby.peer is standby.side.client  # one client: the one it fetches with is the one it asks with
    assert active.audits_first and not standby.audits_first
    assert standby.diagnosis_status and not active.diagnosis_status


def test_each_role_refuses_the_others_operations(configs: tuple[Config, Config]) -> None:
    a, b = configs

    async def scenario() -> None:
        active, standby = ActiveRole(a, Fence(a)), StandbyRole(b, Fence(b))
        with pytest.raises(WrongRole, match="node-b is the standby; ask the active node"):
            standby.serving()
        with pytest.raises(WrongRole):
            await standby.changes("", 0, 0.0)
        with pytest.raises(WrongRole, match="node-a is the active node: sync runs on the standby"):
            active.pulling()
        assert standby.pulling() is standby.side
        # The standby's roots (for a node that becomes active when none is) wait for its first scan too.
        with pytest.raises(Starting):
            standby.info("1", 0)
        # The active's own operations wait for its first scan.
        with pytest.raises(Starting):
            active.serving()
        with pytest.raises(Starting):
            active.info(None, None)
        await active.start()
        try:
            assert active.ready and active.serving() is active.side
            info = active.info("1", 0)
            assert set(info["roots"]) == {"conf", "udf"} and info["roots"]["conf"] is not None
            assert info["seq"] == active.side.seq > 0 and info["lag_s"] >= 0.0  # the first scan's changes
            assert active.info(None, info["seq"])["lag_s"] == 0.0  # nothing after the last change
            feed = await active.changes(info["instance"], 0, 0.0)
            assert active.check.peer_since == 0  # the lag is dated from what the standby has read
            assert feed["instance"] == info["instance"] and feed["reset"] is False
            brief = await active.status(True, None)
            assert brief == {"errors": []}  # the brief view never asks the peer back
        finally:
            await active.stop()
            await standby.close()
        assert not active.ready

    asyncio.run(scenario())


def test_standby_once_has_no_grace(configs: tuple[Config, Config]) -> None:
    """A one-off check (no agent syncing meanwhile): any difference is a fault at once."""
    _, b = configs

    async def scenario() -> None:
        standby = make_role("standby", b, Fence(b))
        assert isinstance(standby, StandbyRole) and standby.check.grace_s > 0
        try:
            await standby.prepare_once()
            assert standby.check.grace_s == 0.0 and set(standby.side.trees) == {"conf", "udf"}
        finally:
            await standby.close()

    asyncio.run(scenario())


def isinstance_of_role(path: Path) -> list[str]:
    """`isinstance(x, T)` calls in `path` whose T names a role, side or check class."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance":
            kinds = node.args[1]
            names = kinds.elts if isinstance(kinds, ast.Tuple) else [kinds]
            for n in names:
                name = n.id if isinstance(n, ast.Name) else n.attr if isinstance(n, ast.Attribute) else ""
                if name in ROLE_TYPES:
                    found.append(f"{path.name}:{node.lineno}: isinstance(..., {name})")
    return found


def test_no_code_asks_which_role_it_holds() -> None:
    """Code asks the role object, never tests its class (nor its side's, nor its check's)."""
    found = [hit for path in sorted(SRC.rglob("*.py")) for hit in isinstance_of_role(path)]
    assert found == []
    assert isinstance_of_role(Path(__file__)), "the scan finds the isinstance tests of this file"
