"""`hasync status`: role, peer reachability, sync state, lag, pending items, alarms."""

from __future__ import annotations

import sys
from typing import Any

import click

from hasync.cli.common import config_option, handle_errors, json_option, print_json


@click.command()
@config_option
@json_option
@handle_errors
def status(config_path: str, as_json: bool) -> None:
    """Show this node's role and the pair's sync state."""
    import asyncio

    from hasync.config import load

    cfg = load(config_path)
    doc = asyncio.run(_status(cfg))
    if as_json:
        print_json(doc)
    else:
        _print(doc)
    sys.exit(0)


async def _status(cfg: Any) -> dict[str, Any]:
    from hasync.clock import iso
    from hasync.errors import PeerAgentDown, PeerError
    from hasync.peer.client import AgentClient
    from hasync.roles import provider
    from hasync.roles.state import load as kept_role

    async with AgentClient(cfg.local_url(), cfg.token, cfg.peer.timeout_s, name="local") as local:
        try:
            # The local agent asks the peer too (its alarms, its lag), each call bounded by
            # [peer] timeout_s: give it the time for both, or a slow peer looks like a hung local agent.
            doc = await local.status_document(timeout=2 * cfg.peer.timeout_s + 5.0)
            return doc
        except PeerAgentDown:
            pass
    provider(cfg)  # an unsupported role mode: one line, exit 2
    role = kept_role(cfg)
    doc = {
        "node": cfg.node.name,
        "hostname": cfg.node.hostname,
        "role": role.role,
        "epoch": role.epoch,
        "role_since": iso(role.since),
        "role_reason": role.reason,
        "peer": cfg.peer.name,
        "agent_running": False,
        "peer_reachable": None,
        "in_sync": None,
        "lag_s": None,
        "last_sync_at": None,
        "pending": None,
        "cause": None,
        "errors": [],
        "alarms": [],
    }
    async with AgentClient(cfg.peer_url(), cfg.token, cfg.peer.timeout_s, name=cfg.peer.name) as peer:
        try:
            await peer.peer_info()
            doc["peer_reachable"] = True
        except PeerError as exc:
            doc["peer_reachable"] = False
            doc["peer_error"] = {"cause": exc.cause.value, "message": exc.message}
    return doc


def _print(d: dict[str, Any]) -> None:
    def yn(v: Any) -> str:
        return "unknown" if v is None else ("yes" if v else "no")

    click.echo(f"node        {d['node']} ({d['role']}){'' if d.get('agent_running') else '  -- agent NOT running'}")
    if d.get("epoch") is not None:
        click.echo(f"role        {d['role']} since {d.get('role_since') or '-'}, epoch {d['epoch']}")
    aside = d.get("set_aside")
    if aside:
        click.echo(f"set aside   {aside['paths']} path(s) when demoted at {aside['at']}, in {aside['backup_dir']}")
    click.echo(f"peer        {d['peer']}  reachable: {yn(d.get('peer_reachable'))}")
    if d.get("peer_error"):
        click.echo(f"            {d['peer_error']['cause']}: {d['peer_error']['message']}")
    click.echo(f"in sync     {yn(d.get('in_sync'))}" + (f"  cause: {d['cause']}" if d.get("cause") else ""))
    lag = d.get("lag_s")
    click.echo(f"lag         {'-' if lag is None else f'{lag:.1f} s'}")
    click.echo(f"last sync   {d.get('last_sync_at') or '-'}")
    click.echo(f"pending     {'-' if d.get('pending') is None else d['pending']}")
    for e in d.get("errors", [])[:20]:
        click.echo(f"  error     {e['dir']}/{e['path']}: {e['cause']}: {e['reason']}")
    w = d.get("watcher")
    if w:
        click.echo(f"watcher     {w['state']}" + (f"  {w['error']}" if w.get("error") else ""))
    alarms = d.get("alarms", [])
    click.echo(f"alarms      {len(alarms)} active")
    store = d.get("alarm_store")
    if store and not store.get("ok"):
        kept = f", {store.get('kept', 0)} raise/clear kept in memory" if store.get("kept") else ""
        click.echo(f"alarm store DOWN since {store.get('since')}: {store.get('error')}{kept}")
    elif store and store.get("moved_aside"):
        click.echo(f"alarm store damaged file moved aside to {store['moved_aside']}")
