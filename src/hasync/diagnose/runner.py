"""Runs the procedure's steps in order, names one cause, stores the result with the alarm."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

from hasync import clock
from hasync.check import now_utc
from hasync.config import Config
from hasync.diagnose.context import Context
from hasync.diagnose.model import Diagnosis, Step
from hasync.diagnose.nodes import AgentNode, LocalNode, Node
from hasync.diagnose.steps import collect, ha_log, network, recheck, storage, sync_files
from hasync.errors import Cause, PeerError
from hasync.halog import kv
from hasync.peer.client import AgentClient
from hasync.peer.models import PeerStatus

log = logging.getLogger("hasync.diagnose")


async def run(
    cfg: Config,
    role: str,
    local: Node,
    peer_client: AgentClient,
    local_client: AgentClient | None,
    fix: bool,
    alarm: dict[str, Any] | None,
    window_s: float | None = None,
    standby_status: PeerStatus | None = None,
) -> Diagnosis:
    """The whole procedure. `alarm` is the alarm's JSON (to_json), or None for the pair as it is now."""
    window_s = cfg.diagnose.window_s if window_s is None else window_s
    now = now_utc()
    if alarm is not None:
        t = datetime.fromisoformat(alarm["raised_at"])
        window = (t - timedelta(seconds=window_s), t + timedelta(seconds=window_s))
    else:
        window = (now - timedelta(seconds=window_s), now)
    ctx = Context(
        cfg,
        role,
        local,
        AgentNode(cfg.peer.name, peer_client),
        peer_client,
        local_client,
        fix,
        window,
        alarm,
        standby_status=standby_status,
    )
    d = Diagnosis(
        alarm=None if alarm is None else alarm["fingerprint"],
        node=cfg.node.name,
        started_at=clock.iso(now),
    )
    d.steps.append(await _guard("network", network.run(ctx)))
    if ctx.standby_status is None:
        ctx.standby_status = await _standby_status(ctx)
    d.steps.append(await _guard("storage", storage.run(ctx)))
    d.steps.append(await _guard("sync_files", sync_files.run(ctx)))
    d.steps.append(await _guard("ha_log", ha_log.run(ctx)))
    t0 = time.monotonic()
    step, cleared = await recheck.run(ctx)
    step.elapsed_s = time.monotonic() - t0
    d.steps.append(step)
    d.fixed = list(ctx.fixed)
    d.cleared = cleared
    if d.cause is None:
        _name_leftover_cause(d, ctx)
    unresolved = d.cause is not None or (alarm is not None and alarm.get("cleared_at") is None and not cleared)
    d.steps.append(collect.run(ctx, unresolved, cleared))
    log.info("diagnosis done %s", kv(cause=d.cause, fixed=len(d.fixed), cleared=d.cleared, alarm=d.alarm or "-"))
    return d


def _name_leftover_cause(d: Diagnosis, ctx: Context) -> None:
    """No step found a fault: still out of sync means sync_error (a message says why) or unknown."""
    st = ctx.standby_status
    if st is None or st.in_sync is not False:
        return
    cause = Cause.SYNC_ERROR if any(e.cause is Cause.SYNC_ERROR for e in st.errors) else Cause.UNKNOWN
    step = next(s for s in d.steps if s.id == "sync_files")
    reasons = "; ".join(f"{e.dir}/{e.path}: {e.reason}" for e in st.errors[:5])
    step.verdict, step.cause = "fault", cause
    step.evidence = (step.evidence + "\n" if step.evidence else "") + (
        f"the standby reports: {reasons}" if reasons else "the standby is not in sync and reports no error"
    )
    step.action = step.action or "See the ha_log step; if it does not explain the fault, collect the fault information."


async def _standby_status(ctx: Context) -> PeerStatus | None:
    client = ctx.standby_client
    if client is None:
        return None
    try:
        return await client.peer_status(timeout=10)
    except PeerError:
        return None


async def _guard(step_id: str, coro: Any) -> Step:
    """A step that fails unexpectedly reports `error` with the reason; the procedure goes on."""
    t0 = time.monotonic()
    try:
        step: Step = await coro
    except PeerError as exc:
        step = Step(step_id, step_id, "error", f"failed: {exc.message}")
    except Exception as exc:  # a diagnosis must always come back with what it found
        log.exception("diagnosis step failed %s", kv(step=step_id))
        step = Step(step_id, step_id, "error", f"failed: {type(exc).__name__}: {exc}")
    step.elapsed_s = time.monotonic() - t0
    return step


def nodes_for(cfg: Config, local_client: AgentClient | None) -> Node:
    return AgentNode(cfg.node.name, local_client) if local_client is not None else LocalNode(cfg)
