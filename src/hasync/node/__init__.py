"""One node of the pair: its role, the check recorder, the alarms, the audit and the metrics.

The agent (`hasync.agent`) serves a Node over HTTP; `hasync check` runs one check over a Node
when no agent runs. Everything that depends on the role is asked of the role object
(the role table, `hasync.node.table`), which `replace_role` swaps at run time.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from hasync import clock
from hasync.alarms.backends import open_store, store_location
from hasync.alarms.guard import GuardedStore
from hasync.alarms.model import Alarm
from hasync.alarms.notify import Dispatcher, build_notifiers
from hasync.alarms.store import AlarmStore
from hasync.audit import DEEP_TIMEOUT_S, Auditor, Finding
from hasync.check import Verdict, log_transition, run_periodic, timed, with_findings
from hasync.config import Config
from hasync.diagnose import runner
from hasync.diagnose.nodes import LocalNode
from hasync.errors import Cause, PeerError
from hasync.failover import Failover
from hasync.halog import kv
from hasync.keeper import AlarmKeeper
from hasync.manifest import Tree
from hasync.metrics import Metrics
from hasync.node.role import Role
from hasync.node.table import make_role
from hasync.peer.client import AgentClient
from hasync.peer.protocol import API, dec_status
from hasync.roles import Fence, RoleName, provider
from hasync.roles.state import role_path, save
from hasync.urls import is_postgres_url

# The agent's component in the HA log, as before the Node was taken out of the agent.
log = logging.getLogger("hasync.agent")

# Out of sync for these just after a role change: the change explains it (see Node.settling).
SETTLE_CAUSES = (Cause.PEER_UNREACHABLE, Cause.PEER_AGENT_DOWN, Cause.UNKNOWN, Cause.SYNC_ERROR)
SETTLE_MIN_S = 10.0


def status_url(cfg: Config) -> str:
    """This agent's status page as others reach it (Alertmanager's generatorURL): the listen
    address, or this node's hostname when it listens on every address."""
    host, port = cfg.listen_host_port()
    if host in ("0.0.0.0", "::", ""):
        name = cfg.node.hostname
        host = name if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}", name) else socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if cfg.security.tls_cert else "http"
    return f"{scheme}://{host}:{port}{API}/status"


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    tasks.clear()


@dataclass(frozen=True)
class Demoted:
    """What a node that stopped being the active had (its trees, brought up to its disk by a last look),
    and the pinned backup set its replaced versions go to."""

    trees: dict[str, Tree | None]
    with_owner: bool
    backup_set: Path | None


class Node:
    """One node: config, role, check recorder (last verdict, one check at a time), alarm keeper,
    store and dispatcher, auditor and metrics; started and stopped as one."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        provider(cfg)  # an unsupported role mode stops here, before anything starts
        self.fence = Fence(cfg)  # the kept role and epoch (hasync.roles.state), else the config's
        self.fence.on_superseded = lambda state: self.follow_fence_soon()
        self.role: Role = make_role(self.fence.role, cfg, self.fence)
        self.role_changed_at: float | None = None  # monotonic: when the role object was last replaced
        self._follow: asyncio.Task[None] | None = None
        # Called when this node stops being the active (hasync.node.switch lists what it sets aside);
        # that list is kept here for the status document.
        self.on_demoted: Callable[[Demoted], None] | None = None
        self.set_aside: dict[str, Any] | None = None
        self.started_at = clock.now()
        self.metrics = Metrics(self.role.side)
        self.metrics.epoch.set_function(lambda: self.fence.epoch)
        self.auditor = Auditor(self.role.side, cfg.audit, cfg.node.name)
        self.metrics.watch_audit(self.auditor)
        self.last_verdict: Verdict | None = None
        self.keeper: AlarmKeeper | None = None
        self.store: AlarmStore | None = None
        self.guarded: GuardedStore | None = None  # the store, when it is guarded (the agent's)
        self.dispatcher: Dispatcher | None = None
        self.stopping = asyncio.Event()  # set to stop: the node's tasks end
        self._running = False
        self._check_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []  # the node's own: dispatcher, alarm store retry
        self._role_tasks: list[asyncio.Task[None]] = []  # the role's: audit passes, periodic check

    @property
    def ready(self) -> bool:
        """Whether the role has started (the active has scanned its sync dirs)."""
        return self.role.ready

    # -- the check recorder ------------------------------------------------------
    async def run_check(self, found: list[Finding] | None = None) -> Verdict:
        """One check, recorded like the periodic one: it raises and clears the alarm. What the audit
        found since the last check (and `found`, the peer's in a deep check) is out of sync too."""
        async with self._check_lock:
            role = self.role
            v = await timed(role.check.verdict(), self.cfg.node.name, role.name)
            v = with_findings(v, [*self.auditor.take_unreported(), *(found or [])])
            log_transition(self.last_verdict, v)
            self.last_verdict = v
            m = self.metrics
            m.in_sync.set(1 if v.in_sync else 0)
            m.lag.set(v.lag_s if v.lag_s is not None else float("nan"))
            if v.in_sync:
                m.last_sync.set(v.checked_at.timestamp())
            m.out_of_sync.set(len(v.out_of_sync))
            m.checks.labels(result="in_sync" if v.in_sync else "out_of_sync").inc()
            m.check_duration.observe(v.duration_s)
            m.check_cpu.set(v.cpu_s)
            if self.keeper is not None and self.settling(v):
                log.info("role change settling, alarm not raised %s", kv(cause=v.cause, role=role.name))
            elif self.keeper is not None:
                alarm = await self.keeper.on_verdict(v, role.standby_hostname)
                m.alarm_active.labels(alarm_id="45641").set(1 if alarm is not None else 0)
            return v

    def settling(self, v: Verdict) -> bool:
        """An out-of-sync verdict that the role change itself explains (SPEC §10: alarm 45641 is not
        raised for it): within one check interval of the change, or while the role object is being
        replaced, and with a cause the change brings (the peer away or starting, a difference in flight,
        a refused epoch), not one of the files (junk, permissions, disk, a missing dir)."""
        if v.in_sync or v.cause not in SETTLE_CAUSES:
            return False
        if self.fence.role != self.role.name:
            return True
        changed = self.role_changed_at
        return changed is not None and time.monotonic() - changed < max(self.cfg.check.interval_s, SETTLE_MIN_S)

    def audit_doc(self, found: list[Finding]) -> dict[str, Any]:
        a = self.auditor
        return {
            "node": self.cfg.node.name,
            "role": self.role.name,
            "files": a.files,
            "bytes": a.bytes,
            "duration_s": round(a.last_pass_s or 0.0, 3),
            "findings": [f.as_json() for f in found],
        }

    async def audit_now(self) -> dict[str, Any]:
        """This node's part of a deep check: its findings are reported by the asking node's check."""
        self.role.require_ready()
        found = await self.auditor.run_now()
        self.auditor.unreported = [f for f in self.auditor.unreported if f not in found]
        return self.audit_doc(found)

    async def deep_check(self) -> dict[str, Any]:
        """`hasync check --deep`: a full audit now on the active, then on the standby (each repairs what
        it finds), then the check, in which every difference found is out of sync."""
        nodes: dict[str, Any] = {}
        theirs: list[Finding] = []

        async def mine() -> None:
            nodes[self.cfg.node.name] = self.audit_doc(await self.auditor.run_now())

        async def peer() -> None:
            try:
                doc = await self.role.peer.json("POST", f"{API}/audit", {}, timeout=DEEP_TIMEOUT_S)
            except PeerError as exc:
                nodes[self.cfg.peer.name] = {"node": self.cfg.peer.name, "error": exc.message}
                return
            nodes[self.cfg.peer.name] = doc
            theirs.extend(Finding(**f) for f in doc.get("findings", []))

        for step in (mine, peer) if self.role.audits_first else (peer, mine):
            await step()
        v = await self.run_check(theirs)
        doc = v.to_json()
        doc["audit"] = {"nodes": nodes, "differences": sum(len(n.get("findings", [])) for n in nodes.values())}
        return doc

    async def failover(self) -> Failover:
        """The failover verdict now (hasync.failover): asked of the role, never a scan."""
        return await self.role.failover(self.last_verdict)

    # -- the status document -------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """Who answers: the head of `/v1/status`, `/v1/info` and `/v1/collect/info`."""
        return {
            "node": self.cfg.node.name,
            "hostname": self.cfg.node.hostname,
            "role": self.role.name,
            "epoch": self.fence.epoch,
        }

    async def status_doc(self, brief: bool = False) -> dict[str, Any]:
        """`GET /v1/status`: this node, its role's view of the pair, and (unless `brief`, what a peer
        asks for) the audit, the alarms, the last check, transfers and the watcher."""
        doc: dict[str, Any] = {
            **self.identity(),
            "peer": self.cfg.peer.name,
            "agent_running": True,
            "started_at": clock.iso(self.started_at),
            "role_since": clock.iso(self.fence.state.since),
            "role_reason": self.fence.state.reason,
            "set_aside": self.set_aside,
        }
        doc.update(await self.role.status(brief, self.last_verdict))
        if brief:
            return doc
        side = self.role.side
        doc["audit"] = self.auditor.snapshot()
        doc["alarms"] = await self.alarm_docs(include_cleared=False, with_peer=True)
        doc["alarm_store"] = None if self.guarded is None else self.guarded.health().to_json()
        doc["last_check"] = None if self.last_verdict is None else self.last_verdict.to_json()
        doc["transferred"] = {
            "files_sent": side.sent_files,
            "bytes_sent": side.sent_bytes,
            "files_received": side.received_files,
            "bytes_received": side.received_bytes,
        }
        doc["watcher"] = side.watcher_health().as_json()
        return doc

    # -- alarms and their diagnoses ------------------------------------------------
    async def alarm_docs(self, include_cleared: bool, with_peer: bool) -> list[dict[str, Any]]:
        """This node's alarms, and (unless the store is shared) the peer's, newest first."""
        if self.store is None:
            return []
        if include_cleared:
            mine = await asyncio.to_thread(self.store.history)
        else:
            mine = await asyncio.to_thread(self.store.active)
        docs = [a.to_json(diagnosis=True) for a in mine]
        if with_peer and not (self.keeper is not None and self.keeper.shared):
            peer = self.role.peer
            return await peer.with_alarms(docs, include_cleared, timeout=min(5.0, self.cfg.peer.timeout_s))
        return sorted(docs, key=lambda d: d["raised_at"], reverse=True)

    async def run_diagnosis(self, fix: bool, alarm: dict[str, Any] | None) -> dict[str, Any]:
        """The procedure run by this agent (on demand, or when the alarm is raised)."""
        role = self.role
        # The standby's own brief status, read as the diagnosis reads the standby's from its agent.
        status = dec_status(await self.status_doc(brief=True)) if role.diagnosis_status else None
        async with AgentClient(self.cfg.local_url(), self.cfg.token, self.cfg.peer.timeout_s, "local") as me:
            d = await runner.run(
                self.cfg, role.name, LocalNode(self.cfg), role.peer, me, fix, alarm, standby_status=status
            )
        doc = d.as_json()
        if alarm is not None:
            await self.keep_diagnosis(alarm["fingerprint"], alarm["raised_at"], doc)
        return doc

    async def keep_diagnosis(self, fingerprint: str, raised_at: str, doc: dict[str, Any]) -> bool:
        """Store `doc` with the alarm (fingerprint, raised_at) if this node's store has it."""
        if self.store is None:
            return False
        for a in await asyncio.to_thread(self.store.history):
            if a.fingerprint == fingerprint and a.to_json()["raised_at"] == raised_at:
                await asyncio.to_thread(self.store.set_diagnosis, a.id, doc)
                return True
        return False

    async def _on_raise(self, alarm: Alarm) -> None:
        """Diagnose right away, so that the alarm already carries its diagnosis when someone looks."""
        if not self.cfg.diagnose.on_raise:
            return
        try:
            await self.run_diagnosis(self.cfg.diagnose.auto_fix, alarm.to_json())
        except Exception:
            log.exception("automatic diagnosis failed")

    async def open_alarms(self, run_dispatcher: bool = True, guarded: bool = True) -> None:
        """The alarm store, notifiers and keeper. `guarded` (the agent): a store that cannot be opened or
        fails later is a reported fault, not a stop (`hasync.alarms.guard`); otherwise StoreError stops."""
        cfg = self.cfg
        store, state_dir = cfg.alarms.store, cfg.node.state_dir
        if guarded:
            up = self.metrics.alarm_store_up
            self.guarded = GuardedStore(
                partial(open_store, store, state_dir, **({"move_aside_damaged": True} if store == "sqlite" else {})),
                store_location(store, state_dir),
                on_change=lambda ok: up.set(1 if ok else 0),
            )
            self.store = self.guarded
            if not run_dispatcher:
                await asyncio.to_thread(self.guarded.open)
            # else the store's retry task opens it at once: a store that hangs never delays replication
        else:
            self.store = await asyncio.to_thread(open_store, store, state_dir)
        notifiers = build_notifiers(
            cfg.alarms.notify,
            hostname=cfg.node.hostname,
            config_path=str(cfg.path),
            resend_s=cfg.alarms.resend_s,
            resolved_retention_s=cfg.alarms.resolved_retention_s,
            generator_url=status_url(cfg),
        )
        self.dispatcher = Dispatcher(self.store, notifiers)
        shared = is_postgres_url(cfg.alarms.store)
        keys = [n.key for n in notifiers]
        self.keeper = AlarmKeeper(cfg, self.role.alarm_duty, self.store, self.dispatcher, keys, self.role.peer, shared)
        self.keeper.on_raise = self._on_raise
        if run_dispatcher:
            self._tasks.append(asyncio.create_task(self.dispatcher.run(self.stopping), name="dispatcher"))
        if self.guarded is not None and run_dispatcher:
            retry = self.guarded.run(self.stopping, on_recover=self.dispatcher.wake)
            self._tasks.append(asyncio.create_task(retry, name="alarm-store"))

    # -- life cycle -------------------------------------------------------------------
    async def start(self) -> None:
        """The alarms, then the role (the active's first scan), then the role's tasks."""
        if not role_path(self.cfg).exists():  # the initial role, kept: its `since` survives restarts
            await asyncio.to_thread(save, self.cfg, self.fence.state)
        await self.open_alarms()
        await self.role.start()
        self._running = True
        self._start_role_tasks()
        await self.follow_fence()  # superseded while it started (its first scan): the role it holds now

    def _start_role_tasks(self) -> None:
        if self.cfg.audit.enabled:
            self._role_tasks.append(asyncio.create_task(self.auditor.run(self.stopping), name="audit"))
        check = run_periodic(self.run_check, self.cfg.check.interval_s, self.stopping)
        self._role_tasks.append(asyncio.create_task(check, name="check"))

    async def stop(self) -> None:
        """End the node's and the role's tasks, stop the role's side and close its peer client."""
        self.stopping.set()
        self._running = False
        if self._follow is not None:
            self._tasks.append(self._follow)
        await _cancel([*self._tasks, *self._role_tasks])
        self._tasks.clear()
        self._role_tasks.clear()
        await self.role.stop()

    async def close(self) -> None:
        """Close the peer client and the alarm store: after `stop()`, or after a one-off check."""
        await self.role.close()
        if self.store is not None:
            await asyncio.to_thread(self.store.close)

    async def replace_role(self, name: str) -> None:
        """Stop the current role (its tasks, its side, its peer client) and give this node a new role
        `name`, started if the node runs: the seam of a switchover. The alarm store, the dispatcher,
        the metrics and the last verdict (the pair's state, whoever holds which role) stay."""
        async with self._check_lock:  # no check runs on a role being stopped
            old = self.role
            demoting = old.name == "active" and name == "standby"
            await _cancel(self._role_tasks)
            if demoting:
                try:
                    await old.look_once_more()
                except Exception:  # the demotion goes on: a path it missed is still set aside, unlisted
                    log.exception("demoted: the last look at the copy failed")
            await old.stop()
            self.role = new = make_role(name, self.cfg, self.fence)
            new.side.adopt(old.side.trees)  # the new side's first scan reuses the old one's digests
            self.role_changed_at = time.monotonic()
            demoted: Demoted | None = None
            if demoting:
                # The versions the new standby replaces are this node's unsynced work: a pinned set.
                why = f"set aside when {self.cfg.node.name} became standby at epoch {self.fence.epoch}"
                try:
                    aside: Path | None = await asyncio.to_thread(new.pulling().backups.set_aside, why)
                except OSError as exc:
                    aside = None
                    log.error("cannot start the set-aside backup set %s", kv(error=exc.strerror or exc))
                demoted = Demoted(dict(old.side.trees), old.side.with_owner, aside)
            # A new auditor for the new side: a pass of the old one never compares against the new trees.
            self.auditor = Auditor(new.side, self.cfg.audit, self.cfg.node.name)
            self.metrics.follow(new.side)
            self.metrics.watch_audit(self.auditor)
            if self.keeper is not None:
                self.keeper.follow(new.alarm_duty, new.peer)
            log.info("role replaced %s", kv(node=self.cfg.node.name, was=old.name, role=new.name))
            if self._running:
                await new.start()
        if self._running:
            self._start_role_tasks()
        if demoted is not None and self.on_demoted is not None:
            self.on_demoted(demoted)

    async def become(self, role: RoleName, epoch: int, reason: str) -> None:
        """Keep `role` at `epoch` (hasync.roles.state), then take it: the role object replaced."""
        self.fence.set(role, epoch, reason)
        await self.follow_fence()

    def follow_fence_soon(self) -> None:
        """Swap the role object for the one the fence now says (called when this active was superseded)."""
        if self._follow is None or self._follow.done():
            self._follow = asyncio.create_task(self.follow_fence(), name="follow-role")

    async def follow_fence(self) -> None:
        """Replace the role object until it is the kept role (which may change again meanwhile)."""
        while self._running and self.role.name != self.fence.role:
            await self.replace_role(self.fence.role)
