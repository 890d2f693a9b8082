"""The standby role's status document (hasync.node.standby): its own view, and the lag of what it lacks.

(What the role table holds and what each role refuses: tests/node/test_roles.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hasync import config
from hasync.check import Verdict
from hasync.config import ensure_dirs
from hasync.demo import write_pair
from hasync.errors import Cause, PeerUnreachable
from hasync.node.standby import StandbyRole
from hasync.peer.models import PeerInfo
from hasync.peer.protocol import dec_info
from hasync.roles.state import Fence

LAST_SYNC = datetime(2026, 11, 25, 9, 0, tzinfo=UTC).timestamp()


class FakeInfo:
    """The active's `/v1/info` as the standby's peer client would get it; counts the questions."""

    def __init__(self, answer: dict[str, Any] | BaseException) -> None:
        self.answer = answer
        self.asked: list[int | None] = []

    async def __call__(self, since: int | None = None, timeout: float = -1.0, owner: bool | None = None) -> PeerInfo:
        self.asked.append(since)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return dec_info(self.answer)


def active_info(lag_s: float | None) -> dict[str, Any]:
    return {
        "role": "active",
        "node": "node-a",
        "instance": "i1",
        "seq": 50,
        "roots": {},
        "with_owner": False,
        "lag_s": lag_s,
    }


@pytest.fixture
def standby(tmp_path: Path) -> Iterator[StandbyRole]:
    cfg = config.load(write_pair(tmp_path).config_b)
    ensure_dirs(cfg)
    role = StandbyRole(cfg, Fence(cfg))
    yield role
    asyncio.run(role.close())


def lagging(lag_s: float) -> Verdict:
    return Verdict(in_sync=False, cause=Cause.SYNC_ERROR, peer_reachable=True, lag_s=lag_s)


def status(role: StandbyRole, info: FakeInfo, brief: bool, last: Verdict | None) -> dict[str, Any]:
    role.peer.peer_info = info  # type: ignore[method-assign]
    doc: dict[str, Any] = asyncio.run(role.status(brief, last))
    # The failover verdict rides along (tests/test_failover.py tests it); here: the role's own figures.
    assert isinstance(doc.pop("failover_safe"), bool) and "failover_reason" in doc
    del doc["failover_reason"], doc["failover_detail"]
    return doc


def behind(role: StandbyRole) -> None:
    side = role.side
    side.in_sync, side.pending, side.seq, side.last_sync_at = False, 3, 42, LAST_SYNC


def test_in_sync_is_lag_zero_and_never_asks_the_active(standby: StandbyRole) -> None:
    standby.side.in_sync, standby.side.last_sync_at = True, LAST_SYNC
    info = FakeInfo(AssertionError("not asked"))
    doc = status(standby, info, brief=False, last=lagging(9.0))
    assert doc == {
        "peer_reachable": True,
        "in_sync": True,
        "lag_s": 0.0,
        "last_sync_at": datetime.fromtimestamp(LAST_SYNC, UTC).astimezone().isoformat(timespec="seconds"),
        "pending": 0,
        "cause": None,
        "errors": [],
        "peer_error": None,
    }
    assert info.asked == []


def test_the_lag_comes_from_the_standbys_own_check_when_it_lacks_something(standby: StandbyRole) -> None:
    """The active's feed has been read past what the standby could not apply: only the standby knows that lag."""
    behind(standby)
    info = FakeInfo(active_info(0.0))
    assert status(standby, info, brief=True, last=lagging(7.0))["lag_s"] == 7.0
    assert status(standby, info, brief=True, last=None)["lag_s"] is None, "unknown, not 0"
    in_sync_verdict = Verdict(in_sync=True, cause=None, peer_reachable=True, lag_s=0.0)
    assert status(standby, info, brief=True, last=in_sync_verdict)["lag_s"] is None
    assert info.asked == [], "the brief view (what the peer asks for) never asks the peer back"
    doc = status(standby, info, brief=False, last=lagging(7.0))
    assert (doc["lag_s"], doc["pending"], doc["in_sync"]) == (7.0, 3, False)
    assert info.asked == [42], "the active is asked for the lag of its feed after what the standby has read"


@pytest.mark.parametrize(("feed_lag", "own_lag", "lag"), [(12.0, 7.0, 12.0), (3.0, 7.0, 7.0), (None, 7.0, 7.0)])
def test_the_full_view_takes_the_larger_of_the_feeds_lag_and_its_own(
    standby: StandbyRole, feed_lag: float | None, own_lag: float, lag: float
) -> None:
    behind(standby)
    assert status(standby, FakeInfo(active_info(feed_lag)), brief=False, last=lagging(own_lag))["lag_s"] == lag


def test_the_feeds_lag_alone_when_its_own_check_has_none(standby: StandbyRole) -> None:
    behind(standby)
    assert status(standby, FakeInfo(active_info(12.0)), brief=False, last=None)["lag_s"] == 12.0


@pytest.mark.parametrize(
    "answer",
    [PeerUnreachable("node-a does not answer"), {"role": "active", "roots": "not a map", "instance": "i"}],
    ids=["unreachable", "malformed"],
)
def test_a_failed_question_to_the_active_keeps_its_own_lag(standby: StandbyRole, answer: Any) -> None:
    behind(standby)
    info = FakeInfo(answer)
    assert status(standby, info, brief=False, last=lagging(7.0))["lag_s"] == 7.0
    assert info.asked == [42]


def test_a_peer_error_is_told_and_the_peer_not_asked(standby: StandbyRole) -> None:
    behind(standby)
    standby.side.peer_error = PeerUnreachable("node-a does not answer")
    info = FakeInfo(active_info(12.0))
    doc = status(standby, info, brief=False, last=lagging(7.0))
    assert doc["peer_reachable"] is False and doc["cause"] == "peer_unreachable"
    assert doc["peer_error"] == {"cause": "peer_unreachable", "message": "node-a does not answer"}
    assert doc["lag_s"] == 7.0 and info.asked == []
