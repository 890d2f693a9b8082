"""`hasync diagnose`: the alarm's troubleshooting procedure, step by step with evidence; `--fix` repairs."""

from __future__ import annotations

import sys
from typing import Any

import click

from hasync.cli.common import config_option, handle_errors, json_option, print_json


@click.command()
@config_option
@click.option("--alarm", "fingerprint", metavar="FP", help="the alarm to diagnose (default: the active one)")
@click.option("--fix", is_flag=True, help="prune backup sets and delete junk files; nothing else is changed")
@click.option(
    "--window",
    "window_s",
    type=float,
    default=None,
    metavar="SECONDS",
    help="ha_log step: seconds before and after the alarm (default [diagnose] window_s)",
)
@json_option
@handle_errors
def diagnose(config_path: str, fingerprint: str | None, fix: bool, window_s: float | None, as_json: bool) -> None:
    """Run the ALM-45641 procedure: network, storage, sync_files, ha_log, recheck, collect.

    Exit 0 when no fault is left (none found, or the fix cleared the alarm), 1 otherwise."""
    import asyncio

    from hasync.config import load

    cfg = load(config_path)
    doc = asyncio.run(_diagnose(cfg, fingerprint, fix, window_s))
    if as_json:
        print_json({k: doc[k] for k in ("cause", "steps", "fixed", "cleared")} | {"alarm": doc.get("alarm")})
    else:
        _print(cfg, doc)
    sys.exit(0 if doc["cause"] is None or doc["cleared"] else 1)


async def _diagnose(cfg: Any, fingerprint: str | None, fix: bool, window_s: float | None) -> dict[str, Any]:
    from hasync import halog
    from hasync.cli.alarms import list_alarms
    from hasync.diagnose import runner
    from hasync.errors import PeerAgentDown, UsageError
    from hasync.peer.client import AgentClient
    from hasync.peer.protocol import API
    from hasync.roles import node_role

    role = node_role(cfg)
    # With no fingerprint, an active alarm in this node's own store is the one to diagnose: the peer
    # (which may be the fault, and cost a timeout) is not asked.
    alarms = await list_alarms(
        cfg,
        include_cleared=fingerprint is not None,
        enough=None if fingerprint is not None else lambda docs: any(d["cleared_at"] is None for d in docs),
    )
    alarm: dict[str, Any] | None = None
    if fingerprint is not None:
        alarm = next((a for a in alarms if a["fingerprint"] == fingerprint), None)
        if alarm is None:
            raise UsageError(f"no alarm with fingerprint {fingerprint!r} on either node (see `hasync alarms --all`)")
    else:
        alarm = next((a for a in alarms if a["cleared_at"] is None), None)
    local = AgentClient(cfg.local_url(), cfg.token, cfg.peer.timeout_s, name="local")
    peer = AgentClient(cfg.peer_url(), cfg.token, cfg.peer.timeout_s, name=cfg.peer.name)
    async with local, peer:
        try:
            await local.health()
            local_client: AgentClient | None = local
        except PeerAgentDown:
            local_client = None
            halog.setup(cfg.node.log_dir, cfg.log.max_bytes, cfg.log.backup_count, cfg.log.level, stderr=False)
        d = await runner.run(cfg, role, runner.nodes_for(cfg, local_client), peer, local_client, fix, alarm, window_s)
        doc = d.as_json()
        if alarm is not None:
            body = {"fingerprint": alarm["fingerprint"], "raised_at": alarm["raised_at"], "diagnosis": doc}
            for client in (local_client, peer):
                if client is None:
                    continue
                try:
                    if (await client.json("POST", f"{API}/alarms/diagnosis", body))["stored"]:
                        break
                except Exception:  # storing is best effort; the result is printed anyway
                    continue
    return doc


MARK = {"ok": "ok", "fault": "FAULT", "skipped": "skipped", "error": "ERROR"}


def _print(cfg: Any, d: dict[str, Any]) -> None:
    head = f"alarm {d['alarm']}" if d.get("alarm") else "the pair as it is now"
    click.echo(f"Diagnosis of {head}, run on {cfg.node.name}")
    for i, s in enumerate(d["steps"], 1):
        took = f" ({s['elapsed_s']:.1f} s)" if s.get("elapsed_s", 0) >= 1 else ""
        click.echo(f"{i}. {s['id']:<11} {MARK[s['verdict']]:<8} {s['title']}{took}")
        for line in (s["evidence"] or "").split("\n"):
            if line:
                click.echo(f"      {line}")
        if s["action"]:
            click.echo(f"   -> {s['action']}")
    for f in d["fixed"]:
        click.echo(f"fixed: {f}")
    cleared = {True: "yes", False: "no", None: "-"}[d["cleared"]]
    click.echo(f"cause: {d['cause'] or 'none found'}; alarm cleared: {cleared}")
