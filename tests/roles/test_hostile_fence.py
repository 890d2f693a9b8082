"""Review of issue 13, without processes: the epoch rules (the Fence), role.json at its limits, and
`fetch.differences` (what a promotion compares). A defect is an xfail(strict) test until it is fixed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest

from hasync import config
from hasync.config import Config, ensure_dirs
from hasync.demo import write_pair
from hasync.errors import HasyncError, StaleEpoch
from hasync.peer.client import AgentClient
from hasync.replication.fetch import differences
from hasync.roles.state import MAX_EPOCH, Fence, load, parse_epoch


def pair_cfg(tmp_path: Path, node: str = "b") -> Config:
    pair = write_pair(tmp_path)
    cfg = config.load(pair.config_a if node == "a" else pair.config_b)
    ensure_dirs(cfg)
    return cfg


@pytest.mark.xfail(
    strict=True, reason="Fence.heard: an active that hears a higher epoch from a standby adopts it and stays active"
)
def test_an_active_that_hears_a_higher_epoch_from_a_standby_stops_being_active(tmp_path: Path) -> None:
    """Issue 13: "an active that meets a peer with a higher epoch stops serving and becomes standby".
    In a pair, a peer holding a higher epoch than this active took part in a role change this node
    missed: it was active at an epoch above this one (forced takeover while this node was cut off,
    then `role set standby` by the HA manager). This node's tree is older than that term's."""
    cfg = pair_cfg(tmp_path, "a")
    fence = Fence(cfg)
    fence.set("active", 1, "role set")
    told: list[Any] = []
    fence.on_superseded = told.append
    try:
        fence.heard(3, "standby", answer=True)
    except StaleEpoch:
        pass
    assert fence.role == "standby", (fence.role, fence.epoch)
    assert load(cfg).role == "standby" and told


@pytest.mark.xfail(
    strict=True, reason="Fence.set keeps an epoch above MAX_EPOCH: role.json then refuses to load, the agent to start"
)
def test_an_epoch_pushed_to_the_maximum_never_leaves_an_unloadable_role_file(tmp_path: Path) -> None:
    """A peer (or anyone with the token) sends `Hasync-Epoch: 9007199254740991`, which parses: the node
    adopts it. The next role change takes MAX_EPOCH + 1 and keeps it; the file then fails `load`
    (the agent cannot start again) and the header fails `parse_epoch` on the peer (400 on every request)."""
    cfg = pair_cfg(tmp_path, "b")
    fence = Fence(cfg)
    fence.heard(parse_epoch(str(MAX_EPOCH)), "active", answer=False)
    assert fence.epoch == MAX_EPOCH
    try:
        fence.set("active", fence.next_epoch(), "switchover")
    except HasyncError:
        pass  # refused cleanly: fine
    kept = load(cfg)  # the agent's next start: must not be a damaged role file
    assert kept.epoch <= MAX_EPOCH
    parse_epoch(fence.headers()["Hasync-Epoch"])  # what the peer will be sent must parse there


def test_equal_epochs_from_two_actives_are_left_as_they_are(tmp_path: Path) -> None:
    """What the Fence does with an active of the same epoch: nothing (the pair tests show the result)."""
    cfg = pair_cfg(tmp_path, "a")
    fence = Fence(cfg)
    fence.set("active", 1, "role set --force")
    fence.heard(1, "active", answer=True)
    fence.heard(1, "active", answer=False)
    assert (fence.role, fence.epoch) == ("active", 1)


@pytest.mark.parametrize("raw", ["\uff19", "\u0661", "\u00b2", "1\u00a0", "+1", "1e3", "0" * 17, "9007199254740992"])
def test_parse_epoch_refuses_non_ascii_signed_and_oversized_values(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_epoch(raw)


@pytest.mark.xfail(
    strict=True,
    reason="fetch.differences walks only the dirs in `trees`: a dir the local side has not scanned "
    "(or lacks in its dict) is no difference, so an unscanned standby 'equals' any peer",
)
def test_differences_reports_a_dir_the_local_trees_do_not_hold() -> None:
    """`Switch._promote` compares `dict(side.trees)` with the peer's roots and calls `differences` when
    they differ. Before the standby's first scan its trees are `{}`: the walk loops over nothing and
    returns [], and the promotion says "verify equal" (see test_hostile_roles for the agent doing it)."""
    client = cast(AgentClient, None)  # never called: no dir is walked
    found = asyncio.run(differences(client, {"conf": b"\x01" * 32, "udf": None}, {}, with_owner=False))
    assert [d.dir for d in found] == ["conf"], found
