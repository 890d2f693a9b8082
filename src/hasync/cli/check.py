"""`hasync check`: one sync check now, recorded like the periodic one."""

from __future__ import annotations

import sys
from typing import Any

import click

from hasync.cli import main
from hasync.cli.common import config_option, handle_errors, print_json


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="print the verdict as one JSON document")
@click.option("--nagios", is_flag=True, help="Nagios plugin output and exit codes (0 OK, 2 CRITICAL, 3 UNKNOWN)")
def check(config_path: str, as_json: bool, nagios: bool) -> None:
    """Check the pair now: exit 0 in sync, 1 out of sync. It raises and clears alarm 45641 like the
    periodic check. With the node's agent running the agent checks; otherwise this process does."""
    if nagios:
        _nagios(config_path)
        return
    _plain(config_path, as_json)


@handle_errors
def _plain(config_path: str, as_json: bool) -> None:
    import asyncio

    from hasync.config import load

    cfg = load(config_path)
    doc = asyncio.run(check_once(cfg))
    if as_json:
        print_json(doc)
    else:
        _print(doc)
    sys.exit(0 if doc["in_sync"] else 1)


def _nagios(config_path: str) -> None:
    import asyncio

    from hasync.check import Verdict
    from hasync.config import load
    from hasync.errors import HasyncError

    try:
        cfg = load(config_path)
        doc = asyncio.run(check_once(cfg))
    except HasyncError as exc:
        click.echo(f"HASYNC UNKNOWN - {exc.message} | out_of_sync=U lag=U")
        sys.exit(3)
    text, code = Verdict.from_json(doc).nagios()
    click.echo(text)
    sys.exit(code)


async def check_once(cfg: Any) -> dict[str, Any]:
    """Ask the local agent to check, or check in this process when no agent runs."""
    from hasync.agent.client import AgentClient
    from hasync.errors import PeerAgentDown
    from hasync.protocol import API

    async with AgentClient(cfg.local_url(), cfg.token, cfg.peer.timeout_s, name="local") as local:
        try:
            doc: dict[str, Any] = await local.json("POST", f"{API}/check", timeout=max(30.0, cfg.check.interval_s))
            return doc
        except PeerAgentDown:
            pass
    return await _standalone(cfg)


async def _standalone(cfg: Any) -> dict[str, Any]:
    import asyncio

    from hasync import halog
    from hasync.agent.server import Agent
    from hasync.check import StandbyCheck
    from hasync.config import ensure_dirs
    from hasync.fsutil import StateLock

    ensure_dirs(cfg)
    halog.setup(cfg.node.log_dir, cfg.log.max_bytes, cfg.log.backup_count, cfg.log.level, stderr=False)
    lock = StateLock(cfg.node.state_dir)
    lock.acquire("check")  # it may remove leftover temp files: never beside another writer
    agent = Agent(cfg)
    try:
        await agent.open_alarms(run_dispatcher=False, guarded=False)
        await agent.side.prepare()
        if isinstance(agent.checker, StandbyCheck):
            agent.checker.grace_s = 0.0
        v = await agent.run_check()
        if agent.dispatcher is not None:
            await agent.dispatcher.flush_once()
        return v.to_json()
    finally:
        await agent.close_clients()
        if agent.store is not None:
            await asyncio.to_thread(agent.store.close)
        lock.release()


def _print(d: dict[str, Any]) -> None:
    if d["in_sync"]:
        lag = d.get("lag_s")
        click.echo(f"in sync (checked {d['checked_at']}, lag {0 if lag is None else lag:.1f} s)")
        return
    lag = "unknown" if d.get("lag_s") is None else f"{d['lag_s']:.1f} s"
    click.echo(f"OUT OF SYNC: cause {d['cause']}, peer reachable: {'yes' if d['peer_reachable'] else 'no'}, lag {lag}")
    for o in d["out_of_sync"][:50]:
        where = f"{o['dir']}/{o['path']}".strip("/") or "(pair)"
        click.echo(f"  {where}: {o['reason']}")
    if len(d["out_of_sync"]) > 50:
        click.echo(f"  ... {len(d['out_of_sync']) - 50} more")
