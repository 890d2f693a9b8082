"""Role changes without loss: `hasync switchover`, `hasync role set`, and the peer's part of them (SPEC §10).

Promotion (this node, the standby, becomes active) is run by the node that becomes active:

1. ask the peer who it is (`/v1/info`: role, Merkle roots; the answer's epoch is heard by the fence);
2. the peer is the active: freeze its changes (`POST /v1/handover` step `freeze`): it holds file-system
   events for at most FREEZE_TTL_S, so the last sync has a fixed target;
3. a last sync: this standby's reconcile, up to the frozen state;
4. verify: this node's Merkle roots equal the peer's and nothing failed to apply. Otherwise what a
   switchover now would lose is found by a Merkle walk applied nowhere (`fetch.differences`): refused,
   the peer thawed, unless `force`; with `force`, every file the new active lacks is in the HA log;
5. the new epoch (above both nodes'), kept before it takes effect; the peer is told to become standby
   at it (step `demote`). A peer that cannot be told learns the epoch when it is next heard from, and
   an active of an older epoch then becomes standby (hasync.roles.state);
6. the role object replaced: this node serves as the active.

A demoted node keeps its old trees for a moment: once the new active answers, the paths where its copy
differed are listed (HA log and status `set_aside`); the standby's apply moves each old version into a
backup set before replacing it, so a demoted node's unsynced work is set aside, never lost.

An interruption at any step leaves one active: before step 5 the old active stays active (a freeze
ends by itself); after it, the new epoch is kept on the new active, and the old active, told or not,
yields to it when the two next speak.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from hasync import clock
from hasync.errors import BadRequest, HasyncError, PeerError, PeerWrongRole, SwitchRefused, WrongRole
from hasync.halog import kv
from hasync.node import Demoted, Node
from hasync.peer.client import AgentClient
from hasync.peer.models import PeerInfo
from hasync.peer.protocol import API
from hasync.replication.fetch import Difference, differences
from hasync.roles import provider
from hasync.roles.state import role_path

log = logging.getLogger("hasync.switch")

# Crash tests only (tests/roles/test_switch_crash.py): this agent kills itself with SIGKILL right
# after the step of this name (a promoter's step, or "handover:freeze" / "handover:demote" on the peer).
CRASH_ENV = "HASYNC_CRASH_AT"
# The freeze is a lease: the promoter renews it every third of it while it works, so that a promoter
# that dies half-way leaves the active frozen this long at most.
FREEZE_TTL_S = 6.0
MAX_LISTED = 100  # paths listed in a report and in the HA log (the count and bytes are whole)
SET_ASIDE_RETRY_S = 2.0
SWITCH_TIMEOUT_S = 900.0  # a forwarded switchover: the standby's last sync may move many files


@dataclass
class Report:
    """What a role change did (`switchover --json`, `role set --json`)."""

    action: str
    node: str
    ok: bool = False
    role: str = ""
    epoch: int = 0
    reason: str | None = None
    forced: bool = False
    peer_told: bool | None = None
    lost: list[Difference] = field(default_factory=list)  # what the new active lacked (forced)
    lost_known: bool = True  # False: the peer could not be asked, what it had is unknown
    steps: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    duration_s: float = 0.0

    def step(self, name: str, **detail: Any) -> None:
        self.steps.append({"step": name, "at": clock.iso(clock.now(), "milliseconds"), **detail})
        log.info("%s step %s", self.action, kv(step=name, node=self.node, **detail))
        crash_point(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "action": self.action,
            "node": self.node,
            "role": self.role,
            "epoch": self.epoch,
            "reason": self.reason,
            "forced": self.forced,
            "peer_told": self.peer_told,
            "lost": {
                "known": self.lost_known,
                "files": len(self.lost),
                "bytes": sum(d.size or 0 for d in self.lost),
                "paths": [d.as_json() for d in self.lost[:MAX_LISTED]],
            },
            "steps": self.steps,
            "duration_s": round(self.duration_s, 3),
        }


def summary(diffs: list[Difference]) -> str:
    shown = ", ".join(f"{d.dir}/{d.path} ({d.what})" for d in diffs[:5])
    more = f" and {len(diffs) - 5} more" if len(diffs) > 5 else ""
    return f"{len(diffs)} path(s), {sum(d.size or 0 for d in diffs)} bytes: {shown}{more}"


class Switch:
    """The role changes of one Node, one at a time."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._lock = asyncio.Lock()
        self._set_aside_task: asyncio.Task[None] | None = None
        self._renew: asyncio.Task[None] | None = None  # renews the peer's freeze while a promotion works
        node.on_demoted = self._demoted

    @property
    def cfg(self) -> Any:
        return self.node.cfg

    # -- what the commands ask -------------------------------------------------------
    async def role_set(self, role: str, force: bool) -> Report:
        """`hasync role set` (external mode): this node becomes `role`."""
        if not provider(self.cfg).external:
            raise SwitchRefused(
                f"role.mode is {self.cfg.role.mode!r}: `role set` is for an HA manager (mode 'external'); "
                f"use `hasync switchover`"
            )
        if role == "active":
            return await self.promote(force, "role set")
        if role == "standby":
            return await self.demote(None, "role set standby", "role set")
        raise SwitchRefused(f"role {role!r:.40} is neither 'active' nor 'standby'")

    async def switchover(self, force: bool, forwarded: bool) -> dict[str, Any]:
        """`hasync switchover`: the standby becomes active. Run on the active, it asks the standby (its
        report is the answer)."""
        node = self.node
        if node.fence.role == "standby":
            return (await self.promote(force, "switchover")).to_json()
        if forwarded:
            raise SwitchRefused(f"{self.cfg.node.name} and its peer both say they are active; see their HA logs")
        body = {"force": force, "forwarded": True}
        try:
            # A client of its own: the role's is closed when the standby's promotion demotes this node.
            async with node.role.client() as peer:
                doc: dict[str, Any] = await peer.json("POST", f"{API}/switchover", body, timeout=SWITCH_TIMEOUT_S)
        except PeerError as exc:
            rep = Report("switchover", self.cfg.node.name, role=node.fence.role, epoch=node.fence.epoch)
            rep.reason = f"the standby cannot be asked to take over: {exc.message}"
            rep.step("refused", reason=rep.reason)
            return rep.to_json()
        return doc

    # -- promotion -------------------------------------------------------------------
    async def promote(self, force: bool, action: str) -> Report:
        async with self._lock:
            node = self.node
            rep = Report(action, self.cfg.node.name, forced=force)
            try:
                await self._promote(rep, force)
            finally:
                self._stop_renewing()
                rep.role, rep.epoch = node.fence.role, node.fence.epoch
                rep.duration_s = time.monotonic() - rep.started
            return rep

    async def _promote(self, rep: Report, force: bool) -> None:
        node = self.node
        if node.fence.role == "active":
            rep.ok, rep.reason = True, f"{self.cfg.node.name} is already active"
            return
        side = node.role.pulling()
        node.role.require_ready()  # its copy is not known yet: nothing to compare (keepalived at boot)
        peer = node.role.peer
        rep.step("start", force=force, epoch=node.fence.epoch)
        info: PeerInfo | None = None
        frozen = False
        try:
            info = await peer.peer_info(owner=self.cfg.is_root)
            rep.step("peer", role=info.role or None)
            # The peer's part: the active freezes its changes; a standby only says it is not promoting
            # itself now. A peer that is promoting itself refuses both (409): then so does this node.
            step = "freeze" if info.is_active else "claim"
            try:
                await peer.json("POST", f"{API}/handover", {"step": step, "ttl_s": FREEZE_TTL_S})
            except PeerWrongRole as exc:
                rep.reason = f"{self.cfg.peer.name} is changing its own role: {exc.message}"
                rep.step("refused", reason=rep.reason)
                return
            frozen = info.is_active
            rep.step(step, ttl_s=FREEZE_TTL_S)
            if frozen:
                self._renew = asyncio.create_task(self._keep_frozen(peer), name="keep-frozen")
            if info.is_active:
                result = await side.reconcile()
                rep.step("last sync", in_sync=result.in_sync, files=result.files, bytes=result.bytes)
            # (a standby peer: no node is active, e.g. both set standby by an HA manager; the copies are
            # compared as they are, each kept current by its watcher)
            info = await peer.peer_info(owner=self.cfg.is_root)
            trees = dict(side.trees)
            if dict(info.roots) != side.roots():
                rep.lost = await differences(peer, dict(info.roots), trees, side.with_owner)
            errors = side.sorted_errors()
            if errors and not rep.lost:  # the roots agree, yet a file failed: it counts as lacking
                rep.lost = [Difference(e.dir, e.path, "differs", e.size or None) for e in errors]
            self._stop_renewing()
            rep.step("verify", equal=not rep.lost, paths=len(rep.lost))
        except PeerError as exc:
            rep.lost_known = False
            rep.reason = f"the peer cannot be asked: {exc.message}"
            rep.step("peer unreachable", error=exc.message)
        if rep.lost or not rep.lost_known:
            if rep.lost:
                rep.reason = f"the standby lacks {summary(rep.lost)}"
            if not force:
                if frozen:
                    await _quietly(peer, {"step": "thaw"})
                rep.step("refused", reason=rep.reason)
                return
            self._log_lost(rep)
        epoch = node.fence.next_epoch()
        why = f"{rep.action}{' --force' if force else ''} from {self.cfg.peer.name}"
        try:
            node.fence.set("active", epoch, why)  # kept first: from now on this node's word is the active's
        except (OSError, HasyncError) as exc:
            if frozen:
                await _quietly(peer, {"step": "thaw"})
            text = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
            rep.ok, rep.reason = False, f"cannot keep the new epoch in {role_path(self.cfg)}: {text}"
            rep.step("refused", reason=rep.reason)
            return
        rep.step("epoch kept", epoch=epoch)
        if info is not None:  # an unreachable peer learns the epoch when it is next heard from
            rep.peer_told = await _quietly(peer, {"step": "demote", "epoch": epoch})
            rep.step("peer told", told=rep.peer_told)
        await node.follow_fence()
        rep.ok = True
        rep.reason = rep.reason if force and (rep.lost or not rep.lost_known) else None
        rep.step("serving", epoch=epoch, seconds=f"{time.monotonic() - rep.started:.3f}")

    async def _keep_frozen(self, peer: AgentClient) -> None:
        while True:
            await asyncio.sleep(FREEZE_TTL_S / 3)
            await _quietly(peer, {"step": "freeze", "ttl_s": FREEZE_TTL_S})

    def _stop_renewing(self) -> None:
        if self._renew is not None:
            self._renew.cancel()
            self._renew = None

    def _log_lost(self, rep: Report) -> None:
        if not rep.lost_known:
            log.warning("forced: what the new active lacks is unknown %s", kv(node=self.cfg.node.name, why=rep.reason))
            return
        total = sum(d.size or 0 for d in rep.lost)
        log.warning("forced: the new active lacks %s", kv(paths=len(rep.lost), bytes=total))
        for d in rep.lost[:MAX_LISTED]:
            log.warning("lacks %s", kv(dir=d.dir, path=d.path, what=d.what, size=d.size))

    # -- demotion --------------------------------------------------------------------
    async def demote(self, epoch: int | None, why: str, action: str) -> Report:
        """This node becomes standby: at `epoch` (the new active's, when it says so), else at a new one."""
        async with self._lock:
            node = self.node
            rep = Report(action, self.cfg.node.name)
            if node.fence.role == "standby":
                if epoch is not None and epoch > node.fence.epoch:
                    node.fence.set("standby", epoch, why)
                rep.ok, rep.reason = True, f"{self.cfg.node.name} is already standby"
            else:
                new = node.fence.next_epoch() if epoch is None else epoch
                await node.become("standby", new, why)
                rep.ok = True
                rep.step("standby", epoch=new)
            rep.role, rep.epoch = node.fence.role, node.fence.epoch
            rep.duration_s = time.monotonic() - rep.started
            return rep

    async def handover(self, step: str, body: dict[str, Any]) -> dict[str, Any]:
        """The peer's steps of a promotion it runs: freeze, thaw, demote."""
        node = self.node
        log.info("handover step %s", kv(step=step, node=self.cfg.node.name, asked_by=self.cfg.peer.name))
        if step in ("freeze", "claim") and self._lock.locked():
            # Both nodes promoting themselves at once: both refuse, and neither becomes active.
            raise WrongRole(f"{self.cfg.node.name} is changing its own role now")
        if step == "claim":
            return {"ok": True}
        if step in ("freeze", "thaw"):
            side = node.role.serving()
            if step == "freeze":
                side.freeze(_number(body, "ttl_s", 1.0, FREEZE_TTL_S))
            else:
                await side.thaw()
            crash_point(f"handover:{step}")
            return {"ok": True, "seq": side.seq}
        if step == "demote":
            epoch = int(_number(body, "epoch", 1, 2**53 - 1))
            rep = await self.demote(epoch, f"handed over to {self.cfg.peer.name}", "handover")
            crash_point("handover:demote")
            return rep.to_json()
        raise SwitchRefused(f"unknown handover step {step!r:.40}")

    # -- what a demoted node set aside ------------------------------------------------
    def _demoted(self, old: Demoted) -> None:
        if self._set_aside_task is not None:
            self._set_aside_task.cancel()
        self._set_aside_task = asyncio.create_task(self._report_set_aside(old), name="set-aside")

    async def _report_set_aside(self, old: Demoted) -> None:
        """Once an active answers, list where the old copy differed from it: each such old version goes
        into a backup set as the standby replaces it."""
        node = self.node
        epoch = node.fence.epoch
        while node.fence.role == "standby":  # until an active answers, whatever epochs pass meanwhile
            peer = node.role.peer
            try:
                info = await peer.peer_info(owner=self.cfg.is_root)
                if info.is_active:
                    diffs = await differences(peer, dict(info.roots), old.trees, old.with_owner)
                    break
            except PeerError:
                pass
            await asyncio.sleep(SET_ASIDE_RETRY_S)
        else:
            return
        kept = [d for d in diffs if d.what in ("differs", "extra", "metadata")]  # those this node had
        node.set_aside = {
            "at": clock.iso(clock.now()),
            "epoch": epoch,
            "backup_dir": str(old.backup_set or self.cfg.backup.dir),
            "paths": len(kept),
            "listed": [d.as_json() for d in kept[:MAX_LISTED]],
        }
        log.warning("demoted: paths set aside %s", kv(paths=len(kept), backup_dir=self.cfg.backup.dir, epoch=epoch))
        for d in kept[:MAX_LISTED]:
            log.warning("set aside %s", kv(dir=d.dir, path=d.path, what=d.what))

    async def stop(self) -> None:
        if self._set_aside_task is not None:
            self._set_aside_task.cancel()
            await asyncio.gather(self._set_aside_task, return_exceptions=True)


async def _quietly(peer: AgentClient, body: dict[str, Any]) -> bool:
    """A handover step the peer may miss (it learns the epoch anyway): True when it answered."""
    try:
        await peer.json("POST", f"{API}/handover", body)
    except PeerError as exc:
        log.warning("handover step not delivered %s", kv(step=body["step"], error=exc.message))
        return False
    return True


def crash_point(step: str) -> None:
    if os.environ.get(CRASH_ENV) == step:
        log.warning("crash test: killed after step %s", step)
        os.kill(os.getpid(), signal.SIGKILL)


def _number(body: dict[str, Any], key: str, low: float, high: float) -> float:
    v = body.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not low <= v <= high:
        raise BadRequest(f"{key}: {v!r:.40} is not a number in {low:g}..{high:g}")
    return float(v)
