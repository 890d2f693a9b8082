"""Alarm 45641's lifecycle: raise and clear from check verdicts, and who notifies.

Who notifies (so that a fault both nodes see is one alarm downstream):

- The standby owns the alarm: it raises and clears it from its own verdicts and
  its notifiers are told. Its HostName parameter is the standby's hostname.
- The active raises the same alarm (same identity, same fingerprint) only when
  the standby has been unreachable (`peer_unreachable`, `peer_agent_down`) for
  `[check] takeover_after` checks in a row: then nobody else can. It clears it
  itself when the standby is back and in sync.
- Whoever raised an alarm also clears it. When the standby is back while the
  active's alarm is still active, it does not raise one of its own: it leaves
  the alarm to the active, which clears it (and notifies) once the standby
  reports in sync again, and keeps its cause and paths current meanwhile.
- A node finds the alarm it raised by the stored record (the pair's active
  alarms in its store), never by recomputing an identity: the active's idea of
  the standby's hostname may change while its alarm is active (it learns it
  when the standby answers), and a verdict never changes an alarm's identity
  mid-life. The identity is computed only for a new raise.
- With a shared PostgreSQL store both agents see one row (one active alarm per
  fingerprint is enforced by the database), so only the node that inserted it
  notified the raise, and only the node that cleared it notifies the clear.

A partition longer than the takeover delay, with a local store on each node,
is the one case both nodes notify (the same fingerprint, so receivers can
deduplicate; Alertmanager does so by its label set).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hasync import clock
from hasync.alarms.model import Alarm, Identity
from hasync.alarms.notify import Dispatcher
from hasync.alarms.store import AlarmStore
from hasync.check import PEER_CAUSES, Verdict
from hasync.config import Config
from hasync.errors import Cause, PeerError
from hasync.halog import kv
from hasync.peer.client import AgentClient

log = logging.getLogger("hasync.alarm")

OnRaise = Callable[["Alarm"], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class AlarmDuty:
    """How a role takes part in alarm 45641 (SPEC §6), declared by the role object (`hasync.node`).

    The owner (the standby) raises the alarm under its own HostName after `raise_after` verdicts, and
    leaves alone an alarm its peer raised while it was away (the peer clears it). The other (the active)
    raises it only once the owner has been unreachable for `takeover_after` verdicts in a row, under the
    owner's HostName."""

    name: str  # the role's name, for the HA log
    owner: bool


class AlarmKeeper:
    def __init__(
        self,
        cfg: Config,
        duty: AlarmDuty,
        store: AlarmStore,
        dispatcher: Dispatcher | None,
        notify: Sequence[str],
        peer: AgentClient | None,
        shared: bool,
    ) -> None:
        self.cfg = cfg
        self.duty = duty
        self.store = store
        self.dispatcher = dispatcher
        self.notify = tuple(notify)
        self.peer = peer
        self.shared = shared
        self.bad = 0
        self.good = 0
        self.unreachable = 0  # out-of-sync verdicts in a row with the standby unreachable
        self.on_raise: OnRaise | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def follow(self, duty: AlarmDuty, peer: AgentClient | None) -> None:
        """Take part as another role now (the node's role was replaced): its duty, its peer client."""
        self.duty, self.peer = duty, peer

    def identity(self, standby_hostname: str | None) -> Identity:
        host = (
            self.cfg.node.hostname
            if self.duty.owner
            else (self.cfg.peer.hostname or standby_hostname or self.cfg.peer.name)
        )
        c = self.cfg.cluster
        return Identity(c.source, c.service_name, c.role_name, host)

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _pair(self, source: object, service_name: object, role_name: object) -> bool:
        """Whether an alarm with these parameters is about this pair (any HostName: the active's may
        have been a fallback)."""
        c = self.cfg.cluster
        return (source, service_name, role_name) == (c.source, c.service_name, c.role_name)

    async def mine(self) -> list[Alarm]:
        """The active alarms this node has to keep and clear: by the stored record, oldest first.

        A local store holds only what this node raised (whatever identity it had then, e.g. a
        HostName from before the active learned the standby's); a shared store holds the pair's
        alarms of both nodes (and maybe other pairs': those are left alone)."""
        active: list[Alarm] = await self._call(self.store.active)
        return [a for a in active if not self.shared or self._pair(a.source, a.service_name, a.role_name)]

    async def on_verdict(self, v: Verdict, standby_hostname: str | None = None) -> Alarm | None:
        """Count the verdict; raise or clear as the rules say. Returns the active alarm, if any."""
        if v.in_sync:
            self.good, self.bad = self.good + 1, 0
        else:
            self.good, self.bad = 0, self.bad + 1
        # The active's takeover counts only verdicts with the standby unreachable, in a row: an
        # out-of-sync verdict while the standby answered is the standby's alarm to raise.
        gone = not v.in_sync and not v.peer_reachable and v.cause in PEER_CAUSES
        self.unreachable = self.unreachable + 1 if gone else 0
        mine = await self.mine()
        current = mine[0] if mine else None
        at = v.checked_at
        if not v.in_sync:
            if current is not None:
                # Still out of sync: keep cause and paths current (no new notification), under the
                # identity the alarm was raised with. A difference without a cause (`unknown`) left by a
                # known fault (changes made during a partition, being caught up) keeps that fault's cause
                # and paths.
                cause = v.cause or Cause.UNKNOWN
                if cause is Cause.UNKNOWN and current.cause != Cause.UNKNOWN:
                    return current
                if current.cause != cause or current.additional_info != v.additional_info():
                    current, _ = await self._call(
                        self.store.raise_alarm, current.identity, cause, v.additional_info(), at
                    )
                return current
            if self.bad < self.cfg.check.raise_after:
                return None
            if not self.duty.owner and self.unreachable < max(
                self.cfg.check.raise_after, self.cfg.check.takeover_after
            ):
                return None
            if self.duty.owner and v.peer_reachable and not self.shared and await self._peer_owns():
                return None  # the active raised it while we were away: it clears it too
            return await self._raise(self.identity(standby_hostname), v, at)
        if current is not None and self.good >= self.cfg.check.clear_after:
            for alarm in mine:
                cleared = await self._call(self.store.clear, alarm.fingerprint, at, notify=self.notify)
                if cleared is not None:
                    log.info(
                        "alarm cleared %s",
                        kv(
                            alarm_id=45641,
                            fingerprint=cleared.fingerprint,
                            host=cleared.host_name,
                            raised_at=clock.iso(cleared.raised_at, tz=UTC),
                        ),
                    )
                    self._wake()
            return None
        return current

    async def _raise(self, ident: Identity, v: Verdict, at: datetime) -> Alarm:
        alarm: Alarm
        alarm, created = await self._call(
            self.store.raise_alarm, ident, v.cause or Cause.UNKNOWN, v.additional_info(), at, notify=self.notify
        )
        if created:
            log.error(
                "alarm raised %s",
                kv(
                    alarm_id=45641,
                    fingerprint=ident.fingerprint,
                    cause=v.cause,
                    host=ident.host_name,
                    by=self.duty.name,
                    info=v.additional_info()[:200],
                ),
            )
            self._wake()
            if self.on_raise is not None:
                task = asyncio.create_task(self.on_raise(alarm))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return alarm

    async def _peer_owns(self) -> bool:
        """Whether the active has an alarm of this pair active (it took over while the standby was
        unreachable), whatever HostName it gave it."""
        if self.peer is None:
            return False
        try:
            theirs = await self.peer.json("GET", "/v1/alarms", timeout=5.0)
        except PeerError:
            return False
        return any(
            isinstance(d, dict)
            and d.get("cleared_at") is None
            and self._pair(d.get("source"), d.get("service_name"), d.get("role_name"))
            for d in theirs
        )

    def _wake(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.wake()
