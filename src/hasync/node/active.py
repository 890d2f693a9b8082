"""The active role: serves its trees, change feed and files; checks the standby's view of the pair.

Mechanism. The active's side (`replication.active.ActiveSide`) keeps its trees current from
file-system events and never writes to its sync dirs; it answers `/v1/tree`, `/v1/changes` and
`/v1/files`, and its part of `/v1/info` carries the feed's instance and sequence and the Merkle
roots the standby compares with. None of these is answered before its first scan is done
(`Starting`, 503): roots of unscanned dirs would say they are missing.

Its check (`check.ActiveCheck`) asks the standby for its brief status over its own peer client and
adds its own unreadable files; where the standby has read the feed to (`since` of its last
`/v1/changes`) dates the lag. The active owns the alarm only when the standby cannot: its verdicts
carry the standby's hostname, configured or learned from the standby's answers.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

from hasync import clock
from hasync.check import ActiveCheck, Verdict
from hasync.config import Config
from hasync.errors import PeerError
from hasync.failover import Failover, active_verdict
from hasync.keeper import AlarmDuty
from hasync.node.role import Role, register
from hasync.replication.active import ActiveSide
from hasync.roles.providers import RoleName
from hasync.roles.state import Fence

FAILOVER_FRESH_S = 1.0  # the active reuses its failover verdict this long (see ActiveRole.failover)


@register
class ActiveRole(Role):
    name: ClassVar[RoleName] = "active"
    alarm_duty = AlarmDuty("active", owner=False)  # raises it only when the standby stays unreachable
    audits_first = True  # the standby's audit then compares with a repaired active

    side: ActiveSide
    check: ActiveCheck

    def __init__(self, cfg: Config, fence: Fence) -> None:
        super().__init__(cfg, fence)
        self.side = ActiveSide(cfg)
        self.peer = self.client()
        self.check = ActiveCheck(self.side, self.peer, cfg.check.interval_s)
        self._failover: tuple[float, Failover] | None = None  # the last verdict and when (monotonic)
        self._failover_lock = asyncio.Lock()

    def serving(self) -> ActiveSide:
        self.require_ready()
        return self.side

    async def changes(self, instance: str, since: int, wait: float) -> dict[str, object]:
        self.check.peer_since = since  # what the standby has read: the lag is dated from there
        return await self.serving().changes(instance, since, wait)

    async def look_once_more(self) -> None:
        # Changes its watchers had not brought in yet (written while it was stopped, or held by a
        # freeze) are in the trees the demoted node lists as set aside.
        if self.ready:
            await self.side.thaw()
            await self.side.rescan_all()

    def info(self, owner: str | None, since: int | None) -> dict[str, Any]:
        side = self.serving()  # not before the first scan: its roots would say the dirs are missing
        if owner is not None:
            # Owners are compared only when both agents run as root: only then can the standby set them.
            side.set_owner_mode(self.cfg.is_root and owner == "1")
        body: dict[str, Any] = {
            "instance": side.instance,
            "seq": side.seq,
            "roots": side.roots(),
            "with_owner": side.with_owner,
        }
        if since is not None:
            t = side.oldest_change_after(since)
            body["lag_s"] = 0.0 if t is None else max(0.0, clock.now() - t)
        return body

    async def status(self, brief: bool, last: Verdict | None) -> dict[str, Any]:
        if brief:
            # What a peer asks for: never ask the peer back (two actives would wait on each other).
            return {"errors": [o.status_json() for o in self.check.own_errors()]}
        v = await self.check.verdict()
        peer = self.check.last_peer_status
        doc: dict[str, Any] = {
            "peer_reachable": v.peer_reachable,
            "in_sync": v.in_sync,
            "lag_s": v.lag_s,
            "last_sync_at": None if peer is None else peer.last_sync_at,
            "pending": None if peer is None else peer.pending,
            "cause": None if v.cause is None else v.cause.value,
            "errors": [o.status_json() for o in v.out_of_sync],
        }
        if not v.peer_reachable and v.out_of_sync:
            doc["peer_error"] = {"cause": v.out_of_sync[0].cause, "message": v.out_of_sync[0].reason}
        doc.update((await self.failover(last)).to_json())
        return doc

    async def failover(self, last: Verdict | None) -> Failover:
        """The standby's own verdict, asked with one brief status request, and this node's unreadable
        files. Answers at most FAILOVER_FRESH_S old are reused: probes arriving together (an HTTP health
        checker, keepalived, the status page) share one request, and a flood of them costs the standby
        at most one brief status per FAILOVER_FRESH_S."""
        async with self._failover_lock:
            if self._failover is not None and time.monotonic() - self._failover[0] < FAILOVER_FRESH_S:
                return self._failover[1]
            own = self.check.own_errors()
            first = None if not own else f"{own[0].dir}/{own[0].path}".strip("/")
            timeout = min(self.cfg.peer.timeout_s, 5.0)
            try:
                doc = await self.peer.status_document(brief=True, timeout=timeout)
                v = active_verdict(doc, None, len(own), first)
            except PeerError as exc:
                v = active_verdict(None, f"{exc.cause}: {exc.message}", len(own), first)
            self._failover = (time.monotonic(), v)
            return v

    @property
    def standby_hostname(self) -> str | None:
        return self.check.peer_hostname
