"""The active role (hasync.node.active): its part of `/v1/info`, its full status document, the standby's hostname.

(What the role table holds and what each role refuses: tests/node/test_roles.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hasync import clock, config
from hasync.check import OutOfSync, Verdict
from hasync.config import Config, ensure_dirs
from hasync.demo import write_pair
from hasync.errors import Cause
from hasync.node.active import ActiveRole
from hasync.peer.protocol import dec_status
from hasync.roles.state import Fence


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    pair = write_pair(tmp_path)
    (pair.data_a / "conf" / "a.yaml").write_text("a: 1\n")
    cfg = config.load(pair.config_a)
    ensure_dirs(cfg)
    return cfg


@pytest.fixture
def active(cfg: Config) -> Iterator[ActiveRole]:
    role = ActiveRole(cfg, Fence(cfg))
    asyncio.run(role.close())  # its client is never used here; the side's first scan is not needed either
    role.ready = True
    yield role


@pytest.mark.parametrize(
    ("root", "owner", "with_owner"),
    [(True, "1", True), (True, "0", False), (False, "1", False), (False, "0", False)],
)
def test_owners_are_compared_only_when_both_agents_are_root(
    active: ActiveRole, monkeypatch: pytest.MonkeyPatch, root: bool, owner: str, with_owner: bool
) -> None:
    monkeypatch.setattr(Config, "is_root", property(lambda self: root))
    modes: list[bool] = []
    monkeypatch.setattr(active.side, "set_owner_mode", modes.append)
    active.info(owner, None)
    assert modes == [with_owner]


def test_info_without_owner_leaves_the_owner_mode(active: ActiveRole, monkeypatch: pytest.MonkeyPatch) -> None:
    modes: list[bool] = []
    monkeypatch.setattr(active.side, "set_owner_mode", modes.append)
    body = active.info(None, None)
    assert modes == [] and "lag_s" not in body
    assert set(body) == {"instance", "seq", "roots", "with_owner"}


def test_the_lag_is_the_age_of_the_oldest_change_after_since(
    active: ActiveRole, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[int] = []

    def oldest(seq: int) -> float | None:
        asked.append(seq)
        return {7: clock.now() - 30.0, 8: clock.now() + 60.0}.get(seq)

    monkeypatch.setattr(active.side, "oldest_change_after", oldest)
    assert 29.0 < active.info(None, 7)["lag_s"] < 40.0
    assert active.info(None, 8)["lag_s"] == 0.0, "a change dated ahead of this clock is no negative lag"
    assert active.info(None, 9)["lag_s"] == 0.0, "no change after since: no lag"
    assert asked == [7, 8, 9]


def status(role: ActiveRole, verdict: Verdict, peer_status: dict[str, Any] | None) -> dict[str, Any]:
    """The active's full status with `peer_status` as the standby's last brief status (decoded as the check does)."""

    async def verdict_now() -> Verdict:
        return verdict

    role.check.verdict = verdict_now  # type: ignore[method-assign]
    role.check.last_peer_status = None if peer_status is None else dec_status(peer_status)
    doc: dict[str, Any] = asyncio.run(role.status(False, None))
    # The failover verdict rides along (tests/test_failover.py tests it); here: the role's own figures.
    assert isinstance(doc.pop("failover_safe"), bool) and "failover_reason" in doc
    del doc["failover_reason"], doc["failover_detail"]
    return doc


def test_the_full_status_is_the_verdict_with_the_standbys_own_figures(active: ActiveRole) -> None:
    behind = OutOfSync("conf", "a.yaml", "differs", Cause.SYNC_ERROR)
    v = Verdict(in_sync=False, cause=Cause.SYNC_ERROR, peer_reachable=True, lag_s=4.5, out_of_sync=(behind,))
    doc = status(active, v, {"last_sync_at": "2026-11-25T09:00:00+00:00", "pending": 2, "cause": "junk_file"})
    assert doc == {
        "peer_reachable": True,
        "in_sync": False,
        "lag_s": 4.5,
        "last_sync_at": "2026-11-25T09:00:00+00:00",
        "pending": 2,
        "cause": "sync_error",  # the verdict's, not the standby's own
        "errors": [{"dir": "conf", "path": "a.yaml", "cause": "sync_error", "reason": "differs"}],
    }


def test_an_unreachable_standby_is_a_peer_error(active: ActiveRole) -> None:
    down = OutOfSync("", "", "node-b does not answer", Cause.PEER_UNREACHABLE)
    v = Verdict(in_sync=False, cause=Cause.PEER_UNREACHABLE, peer_reachable=False, lag_s=None, out_of_sync=(down,))
    doc = status(active, v, None)
    assert doc["peer_error"] == {"cause": "peer_unreachable", "message": "node-b does not answer"}
    assert (doc["last_sync_at"], doc["pending"], doc["lag_s"]) == (None, None, None)
    assert doc["cause"] == "peer_unreachable" and doc["peer_reachable"] is False


def test_a_reachable_standby_has_no_peer_error(active: ActiveRole) -> None:
    v = Verdict(in_sync=True, cause=None, peer_reachable=True, lag_s=0.0)
    doc = status(active, v, {"last_sync_at": None, "pending": 0})
    assert "peer_error" not in doc and doc["cause"] is None and doc["errors"] == []


def test_the_standby_hostname_is_configured_or_learned(cfg: Config) -> None:
    role = ActiveRole(cfg, Fence(cfg))
    asyncio.run(role.close())
    assert role.standby_hostname is None
    role.check.learned_hostname = "standby-host"
    assert role.standby_hostname == "standby-host"
    named = cfg.model_copy(update={"peer": cfg.peer.model_copy(update={"hostname": "configured-host"})})
    role = ActiveRole(named, Fence(named))
    asyncio.run(role.close())
    role.check.learned_hostname = "standby-host"
    assert role.standby_hostname == "configured-host"
