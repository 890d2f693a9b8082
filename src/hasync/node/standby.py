"""The standby role: pulls the active's trees and changes, applies them, and owns the alarm.

Mechanism. The standby's side (`replication.standby.StandbySide`) long-polls the active's change
feed and reconciles by a Merkle walk at start and every `full_reconcile_s`; files arrive as a
framed stream and are applied atomically, old versions backed up. Its peer client is the side's
own: the one it fetches with is the one its check and status ask with. `POST /v1/sync` (a
reconcile now) is answered here only; the active's routes (`/v1/tree`, `/v1/changes`,
`/v1/files`) answer `WrongRole`.

Its check (`check.StandbyCheck`) compares the local Merkle roots with the active's; a difference
younger than one interval is in flight. Run once without an agent (`hasync check` with no agent
running) nothing syncs, so any difference is a fault at once. Its status document is its own view:
what it could not apply, and the lag of what it lacks.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from hasync import clock
from hasync.check import StandbyCheck, Verdict
from hasync.config import Config
from hasync.errors import PeerError, PeerWrongRole
from hasync.failover import Failover, StandbyState, from_check, standby_verdict
from hasync.keeper import AlarmDuty
from hasync.node.role import Role, register
from hasync.replication.standby import LONG_POLL_S, StandbySide
from hasync.roles.providers import RoleName
from hasync.roles.state import Fence


@register
class StandbyRole(Role):
    name: ClassVar[RoleName] = "standby"
    alarm_duty = AlarmDuty("standby", owner=True)  # the standby owns the alarm
    audits_first = False  # the active audits first: compared with a repaired active
    diagnosis_status = True

    side: StandbySide
    check: StandbyCheck

    def __init__(self, cfg: Config, fence: Fence) -> None:
        super().__init__(cfg, fence)
        self.peer = self.client()
        self.side = StandbySide(cfg, self.peer)
        self.check = StandbyCheck(self.side, cfg.check.interval_s)

    async def prepare_once(self) -> None:
        await self.side.prepare()
        self.check.grace_s = 0.0  # no agent syncs meanwhile: any difference is a fault now

    @property
    def max_silence_s(self) -> float:
        """Past this without an answer of the active, it counts as unreachable: the change feed's
        long poll answers at least every LONG_POLL_S, and fails after the peer timeout."""
        return LONG_POLL_S + self.cfg.peer.timeout_s + 5.0

    async def failover(self, last: Verdict | None) -> Failover:
        side = self.side
        if isinstance(side.peer_error, PeerWrongRole) and not side.errors and await self._peer_is_an_equal_standby():
            # No node is active (both set standby by an HA manager): this copy loses nothing if it is
            # the peer's, as `role set active` finds before it promotes (hasync.node.switch).
            return standby_verdict(StandbyState(True, 0, 0, 0, None, None, 0.0, self.max_silence_s, None))
        peer_error = side.peer_error or side.feed_error
        first = next(iter(side.errors.values()), None)
        missing = last.lag_s if last is not None and not last.in_sync else None
        return standby_verdict(
            StandbyState(
                in_sync=side.in_sync,
                pending_files=side.pending,
                pending_bytes=side.pending_bytes,
                apply_errors=len(side.errors),
                first_error=None if first is None else f"{first.dir}/{first.path}: {first.cause}".replace("/:", ":"),
                peer_error=None if peer_error is None else f"{peer_error.cause}: {peer_error.message}",
                heard_s=None if side.heard_at is None else time.monotonic() - side.heard_at,
                max_silence_s=self.max_silence_s,
                oldest_missing_s=missing,
            )
        )

    async def _peer_is_an_equal_standby(self) -> bool:
        try:
            info = await self.peer.peer_info(timeout=min(5.0, self.cfg.peer.timeout_s))
        except PeerError:
            return False
        return not info.is_active and bool(info.roots) and dict(info.roots) == self.side.roots()

    async def failover_alone(self, v: Verdict) -> Failover:
        # Nothing syncs without the agent: only a check that shows the pair in sync now is safe.
        first = v.out_of_sync[0] if v.out_of_sync else None
        where = None if first is None else (f"{first.dir}/{first.path}".strip("/") or first.reason)
        return from_check(v.in_sync, v.peer_reachable, None if v.cause is None else v.cause.value, where, v.lag_s)

    def pulling(self) -> StandbySide:
        return self.side

    def listing(self, dir_name: str, dirs: list[str]) -> list[list[object]]:
        """This copy's listings: for a node that, when no node is active, lists where the copies differ."""
        self.require_ready()
        return self.side.listing(dir_name, dirs)

    def info(self, owner: str | None, since: int | None) -> dict[str, Any]:
        """The Merkle roots of this copy (no change feed: seq 0): a node asked to become active
        compares its own with them when no node is active (`role set` in external mode)."""
        self.require_ready()
        side = self.side
        return {"instance": "", "seq": 0, "roots": side.roots(), "with_owner": side.with_owner}

    async def status(self, brief: bool, last: Verdict | None) -> dict[str, Any]:
        side = self.side
        snap = side.snapshot()
        lag: float | None = 0.0 if snap.in_sync else None
        if not snap.in_sync and last is not None and not last.in_sync:
            # The standby's own check knows how long it has lacked what it could not apply; the
            # active, whose change feed the standby has read past it, does not (its lag would say 0).
            lag = last.lag_s
        if not snap.in_sync and side.peer_error is None and not brief:
            try:
                feed_lag = (await self.peer.peer_info(since=side.seq)).lag_s or 0.0
                lag = max(feed_lag, lag or 0.0)
            except PeerError:
                pass
        err = snap.peer_error
        return {
            "peer_reachable": side.peer_error is None,
            "in_sync": snap.in_sync,
            "lag_s": lag,
            "last_sync_at": clock.iso(snap.last_sync_at),
            "pending": snap.pending,
            "cause": None if snap.cause is None else str(snap.cause),
            "errors": [e.as_json() for e in snap.errors],
            "peer_error": None if err is None else {"cause": err.cause.value, "message": err.message},
            **(await self.failover(last)).to_json(),
        }
