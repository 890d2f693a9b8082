"""The sync check (SPEC §5): a verdict every interval, with cause and lag, that raises and clears alarm 45641."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from hasync import clock
from hasync.audit import Finding
from hasync.errors import Cause, MalformedAnswer, PeerError, cause_of, first_cause
from hasync.fsutil import atomic_write
from hasync.halog import kv
from hasync.peer.client import AgentClient
from hasync.peer.models import PeerStatus
from hasync.replication.active import ActiveSide
from hasync.replication.standby import StandbySide
from hasync.tasks import periodic

log = logging.getLogger("hasync.check")

MAX_LISTED = 1000  # out-of-sync paths listed in one verdict
PEER_CAUSES = (Cause.PEER_UNREACHABLE, Cause.PEER_AGENT_DOWN)


def now_utc() -> datetime:
    return clock.now_utc()


@dataclass(frozen=True)
class OutOfSync:
    """One path out of sync (or, with no dir and path, the pair), with its cause when known."""

    dir: str
    path: str
    reason: str
    cause: Cause | None = None

    def as_json(self) -> dict[str, str]:
        return {"dir": self.dir, "path": self.path, "reason": self.reason}

    def status_json(self) -> dict[str, str]:
        """An item of the status `errors` (docs/protocol.md §7.6): no cause of its own is an empty cause."""
        return {"dir": self.dir, "path": self.path, "cause": self.cause or "", "reason": self.reason}


@dataclass(frozen=True)
class Verdict:
    """One check's result: `check --json` prints `to_json()` (SPEC §3)."""

    in_sync: bool
    cause: Cause | None
    peer_reachable: bool
    lag_s: float | None
    out_of_sync: tuple[OutOfSync, ...] = ()
    checked_at: datetime = field(default_factory=now_utc)
    duration_s: float = 0.0
    cpu_s: float = 0.0
    node: str = ""
    role: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "in_sync": self.in_sync,
            "cause": None if self.cause is None else self.cause.value,
            "peer_reachable": self.peer_reachable,
            "lag_s": None if self.lag_s is None else round(self.lag_s, 3),
            "out_of_sync": [o.as_json() for o in self.out_of_sync],
            "checked_at": clock.iso(self.checked_at),
        }

    def nagios(self) -> tuple[str, int]:
        """A Nagios plugin line and exit code: OK 0, CRITICAL 2 (see `nagios_line`)."""
        perf = {"out_of_sync": str(len(self.out_of_sync))}
        if self.lag_s is not None:  # unknown: left out (Icinga 2 rejects the plugin guidelines' `U`)
            perf["lag"] = f"{self.lag_s:.3f}s"
        if self.in_sync:
            return nagios_line("OK", "standby in sync", perf)
        first = self.out_of_sync[0] if self.out_of_sync else None
        if first is not None and not first.dir and not first.path:
            text = f"{self.cause}: {first.reason}"
        else:
            where = f", first: {first.dir}/{first.path}" if first is not None else ""
            text = f"{self.cause}: {len(self.out_of_sync)} path(s) out of sync{where}"
        return nagios_line("CRITICAL", text, perf)

    def additional_info(self) -> str:
        """The alarm's additional_info: the cause and the first out-of-sync paths."""
        paths = [f"{o.dir}/{o.path}".rstrip("/") for o in self.out_of_sync[:5]]
        more = f" (+{len(self.out_of_sync) - 5} more)" if len(self.out_of_sync) > 5 else ""
        reason = self.out_of_sync[0].reason if self.out_of_sync else ""
        return f"cause={self.cause}; paths: {', '.join(paths) or '-'}{more}; {reason}"[:1000]

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Verdict:
        return cls(
            in_sync=bool(doc["in_sync"]),
            cause=None if doc.get("cause") is None else cause_of(doc["cause"]),
            peer_reachable=bool(doc["peer_reachable"]),
            lag_s=doc.get("lag_s"),
            out_of_sync=tuple(OutOfSync(o["dir"], o["path"], o["reason"]) for o in doc.get("out_of_sync", [])),
            checked_at=datetime.fromisoformat(doc["checked_at"]),
        )


NAGIOS_CODES = {"OK": 0, "CRITICAL": 2, "UNKNOWN": 3}
NAGIOS_TEXT_MAX = 1000  # characters of text before the perfdata (Nagios 4 keeps 8 KiB of output)
_PLUGIN_UNSAFE = frozenset("%|;") | {chr(c) for c in range(32)} | {"\x7f"}


def plugin_text(text: str) -> str:
    """`text` made safe for the text part of a plugin line: `|` would start the perfdata, `;` is
    rewritten by Nagios, a newline would start the long output. Those, `%` and every control
    character are percent-escaped (`|` is `%7C`, `;` is `%3B`, `%` is `%25`): no information is
    lost and the line stays one line. Cut at NAGIOS_TEXT_MAX characters."""
    out = "".join(f"%{ord(c):02X}" if c in _PLUGIN_UNSAFE else c for c in text)
    return out if len(out) <= NAGIOS_TEXT_MAX else out[: NAGIOS_TEXT_MAX - 3] + "..."


def nagios_line(state: str, text: str, perf: dict[str, str] | None = None) -> tuple[str, int]:
    """`HASYNC <state> - <text> | label=value ...` and the state's exit code. A figure that is not
    known is left out of the perfdata; with none known there is no `|` at all."""
    line = f"HASYNC {state} - {plugin_text(text)}"
    if perf:
        line += " | " + " ".join(f"{k}={v}" for k, v in perf.items())
    return line, NAGIOS_CODES[state]


def with_findings(v: Verdict, found: Sequence[Finding]) -> Verdict:
    """`v` with what the audit found (hasync.audit): a difference the watchers missed is out of sync like
    any other (cause `unknown` unless the verdict has one), even though the audit has repaired it."""
    if not found:
        return v
    listed = tuple(OutOfSync(f.dir, f.path, f.reason, Cause.UNKNOWN) for f in found)
    return replace(
        v,
        in_sync=False,
        cause=v.cause or Cause.UNKNOWN,
        out_of_sync=(*v.out_of_sync, *listed)[:MAX_LISTED],
        lag_s=v.lag_s if v.lag_s is not None else 0.0,
    )


class _Grace:
    """Tracks how long the trees have differed: a difference younger than one interval is in flight.

    `of` names what differs from what (the standby: the active's change seq). A difference seen under
    another name is a new one, aged from this look."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.of: object = None

    def age(self, differs: bool, of: object = None) -> float:
        if not differs:
            self.since = None
            return 0.0
        if self.since is None or of != self.of:
            self.since, self.of = time.monotonic(), of
        return time.monotonic() - self.since


class StandbyCheck:
    """The standby's verdict: ask the active for its Merkle roots and lag, compare with the local trees."""

    def __init__(self, side: StandbySide, interval_s: float) -> None:
        self.side = side
        self.interval_s = interval_s
        # A difference younger than this is in flight. A one-off check without a running agent
        # sets it to 0: nothing is syncing then, so any difference is a fault.
        self.grace_s = interval_s
        self.grace = _Grace()

    async def verdict(self, catch_up: bool = True) -> Verdict:
        side = self.side
        timeout = min(side.cfg.peer.timeout_s, max(1.0, self.interval_s / 2))
        try:
            info = await side.client.peer_info(since=side.seq, timeout=timeout)
        except PeerError as exc:
            side.peer_failed(exc)
            self.grace.age(False)
            return Verdict(False, exc.cause, False, None, (OutOfSync("", "", exc.message, exc.cause),))
        if not info.is_active:
            msg = (
                f"{side.cfg.peer.name} is not the active node: "
                f"the two nodes disagree on which one is active (hasync status on both)"
            )
            return Verdict(False, Cause.SYNC_ERROR, True, None, (OutOfSync("", "", msg, Cause.SYNC_ERROR),))
        recovered = side.peer_error is not None
        side.peer_ok()
        listed = [OutOfSync(e.dir, e.path, e.message, e.cause) for e in side.sorted_errors()[:MAX_LISTED]]
        differs = [
            name
            for name, root in info.roots.items()
            if root is None or (t := side.trees.get(name)) is None or t.root_hash() != root
        ]
        # Changes in flight (the active is ahead of what this node has applied) are aged by the active:
        # its lag_s is the age of the oldest change we lack. Only a difference with nothing in flight
        # ages here, from our first look at it. (Under a steady stream of changes two checks in a row
        # often each see a difference, but a new one each time: that is not one old difference.)
        # A difference is in flight too while this node applies (a reconcile or the feed holds the one
        # writer's lock): its tree is being brought to the active's, and its seq moves only at the end.
        # Once the active has moved on, a difference is a new one, aged from this look.
        in_flight = info.seq != side.seq or side.writer_lock.locked()
        age = self.grace.age(bool(differs) and not in_flight, info.seq)
        lag = max(info.lag_s or 0.0, age) if differs else 0.0
        if listed:
            cause = first_cause(o.cause for o in listed if o.cause is not None)
            return Verdict(False, cause, True, lag, tuple(listed))
        if differs:
            if recovered and catch_up and self.grace_s and await side.catch_up(timeout):
                # The peer is back after a failure and we caught up within this check's budget:
                # judge on fresh roots, so that a short outage clears at the first check after it.
                return await self.verdict(catch_up=False)
            if not in_flight or recovered:
                # Nothing in flight, yet different; or the peer is back after a failure: reconcile now
                # (Merkle walk) rather than when the change feed's retry comes round.
                side.kick()
            # Changes made on the active during a partition are as old as the partition: not in flight.
            if lag > self.grace_s or self.grace_s == 0:
                reason = (
                    f"differs from the active for {lag:.0f} s with no error reported"
                    if self.grace_s
                    else "differs from the active, and this node's agent is not running to sync it"
                )
                return Verdict(False, Cause.UNKNOWN, True, lag, tuple(OutOfSync(n, "", reason) for n in differs))
        return Verdict(True, None, True, lag)


PEER_HOSTNAME_FILE = "peer_hostname"  # in the state dir: the standby's hostname as it last reported it
HOSTNAME_MAX = 255


def valid_hostname(name: object) -> bool:
    """A HostName a peer may report: 1..255 printable characters."""
    return isinstance(name, str) and 0 < len(name) <= HOSTNAME_MAX and name.isprintable()


def read_learned_hostname(path: Path) -> str | None:
    """The standby hostname kept in `path`, or None (missing, unreadable or invalid: learned again)."""
    try:
        name = path.read_text(encoding="utf-8", errors="strict")[: HOSTNAME_MAX + 2].strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if valid_hostname(name) else None


class ActiveCheck:
    """The active's verdict: its own unreadable files, and the standby's view of itself."""

    def __init__(self, side: ActiveSide, client: AgentClient, interval_s: float) -> None:
        self.side = side
        self.client = client
        self.interval_s = interval_s
        self.peer_since: int | None = None
        self._learned_path = side.cfg.node.state_dir / PEER_HOSTNAME_FILE
        self.learned_hostname = read_learned_hostname(self._learned_path)
        self._learn_failed = False
        self.last_peer_status: PeerStatus | None = None
        self.grace = _Grace()

    @property
    def peer_hostname(self) -> str | None:
        """The standby's hostname (its alarm's HostName): `[peer] hostname`, else the one it reported
        to this node (persisted, so that an active restarted while the standby is down knows it)."""
        return self.side.cfg.peer.hostname or self.learned_hostname

    def learn_hostname(self, name: object) -> None:
        """Keep the hostname the standby reported; persist it when it changed (atomically)."""
        if not valid_hostname(name) or name == self.learned_hostname:
            return
        assert isinstance(name, str)
        log.info("standby hostname learned %s", kv(peer=self.side.cfg.peer.name, hostname=name))
        self.learned_hostname = name
        try:
            atomic_write(self._learned_path, (name + "\n").encode(), mode=0o644)
            self._learn_failed = False
        except OSError as exc:
            if not self._learn_failed:  # a transition, not a repetition
                log.warning(
                    "cannot keep the standby hostname %s",
                    kv(path=self._learned_path, error=exc.strerror or exc),
                )
            self._learn_failed = True

    def lag(self) -> float | None:
        if self.peer_since is None:
            return None
        t = self.side.oldest_change_after(self.peer_since)
        return 0.0 if t is None else max(0.0, clock.now() - t)

    def own_errors(self) -> list[OutOfSync]:
        out = []
        for name, tree in self.side.trees.items():
            if tree is None:
                out.append(OutOfSync(name, "", "sync dir does not exist on the active", Cause.SOURCE_MISSING))
                continue
            for rel, e in tree.errors():
                assert e.error is not None  # an ERROR entry always carries its ScanError
                out.append(OutOfSync(name, rel, f"cannot be read on the active: {e.error.message}", e.error.cause))
        return out

    async def verdict(self) -> Verdict:
        own = self.own_errors()
        timeout = min(self.side.cfg.peer.timeout_s, max(1.0, self.interval_s / 2))
        try:
            st = await self.client.peer_status(timeout=timeout)
        except MalformedAnswer as exc:  # it answers, wrongly: reachable, its status refused
            msg = f"refused the status of {self.side.cfg.peer.name}: {exc.reason}"
            return Verdict(False, Cause.SYNC_ERROR, True, self.lag(), (OutOfSync("", "", msg, Cause.SYNC_ERROR),))
        except PeerError as exc:
            self.grace.age(False)
            listed = (OutOfSync("", "", exc.message, exc.cause), *own)
            return Verdict(False, exc.cause, False, self.lag(), listed[:MAX_LISTED])
        if not st.is_standby:
            msg = (
                f"{self.side.cfg.peer.name} says it is {st.role!r}, not the standby: "
                f"the two nodes disagree on which one is active (hasync status on both)"
            )
            return Verdict(False, Cause.SYNC_ERROR, True, self.lag(), (OutOfSync("", "", msg, Cause.SYNC_ERROR),))
        self.learn_hostname(st.hostname)
        self.last_peer_status = st
        theirs = [OutOfSync(e.dir, e.path, e.reason, e.cause) for e in st.errors]
        seen = {(o.dir, o.path) for o in theirs}
        listed = tuple(theirs + [o for o in own if (o.dir, o.path) not in seen])[:MAX_LISTED]
        lag = self.lag()
        if st.in_sync is not True and st.lag_s is not None:
            # A change the standby read from the feed but could not apply is lag the feed does not show.
            lag = max(lag or 0.0, st.lag_s)
        if listed:
            return Verdict(False, first_cause(o.cause for o in listed if o.cause is not None), True, lag, listed)
        differs = st.in_sync is not True
        age = self.grace.age(differs)
        if differs and age > self.interval_s:
            reason = f"the standby reports it is not in sync ({age:.0f} s)"
            # No cause of its own (docs/protocol.md §7.6: the status shows it with an empty cause).
            return Verdict(False, st.cause or Cause.UNKNOWN, True, lag, (OutOfSync("", "", reason),))
        return Verdict(True, None, True, lag if differs else 0.0)


async def timed(coro: Any, node: str, role: str) -> Verdict:
    t0, c0 = time.monotonic(), time.process_time()
    v: Verdict = await coro
    return Verdict(
        v.in_sync,
        v.cause,
        v.peer_reachable,
        v.lag_s,
        v.out_of_sync,
        v.checked_at,
        time.monotonic() - t0,
        time.process_time() - c0,
        node,
        role,
    )


def log_transition(prev: Verdict | None, v: Verdict) -> None:
    """Log state transitions, not repetitions."""
    if prev is not None and prev.in_sync == v.in_sync and prev.cause == v.cause:
        return
    if v.in_sync:
        log.info("sync check: in sync %s", kv(lag_s=f"{v.lag_s or 0:.3f}"))
    else:
        first = v.out_of_sync[0] if v.out_of_sync else None
        log.error(
            "sync check: out of sync %s",
            kv(
                cause=v.cause,
                paths=len(v.out_of_sync),
                first=f"{first.dir}/{first.path}" if first else "-",
                reason=first.reason if first else "-",
            ),
        )


async def run_periodic(check: Any, interval_s: float, stop: asyncio.Event) -> None:
    """Run `check()` every `interval_s` until `stop` is set (a failing check is logged, the next one runs)."""
    await periodic(check, interval_s, stop, log, "sync check")
