"""`hasync check`: one sync check now, recorded like the periodic one."""

from __future__ import annotations

import sys
from typing import Any

import click

from hasync.cli.common import config_option, handle_errors, human_bytes, plugin_exit, print_json


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="print the verdict as one JSON document")
@click.option("--nagios", is_flag=True, help="Nagios plugin output and exit codes (0 OK, 2 CRITICAL, 3 UNKNOWN)")
@click.option(
    "--deep", is_flag=True, help="first re-read and hash every file on both nodes (the audit), repairing what differs"
)
@click.option(
    "--failover",
    is_flag=True,
    help="exit 0 only when a switchover now would lose nothing, else 1 with the reason on one line",
)
def check(config_path: str, as_json: bool, nagios: bool, deep: bool, failover: bool) -> None:
    """Check the pair now: exit 0 in sync, 1 out of sync. It raises and clears alarm 45641 like the
    periodic check. With the node's agent running the agent checks; otherwise this process does
    (with --nagios: CRITICAL, this node's agent is not running). With --deep a difference the audit
    found is out of sync (exit 1) even though it was repaired. With --failover: the failover verdict
    (the agent's, or without an agent a check now, safe only if it shows the pair in sync)."""
    if failover and (nagios or deep):
        raise click.UsageError("--failover does not go with --nagios or --deep")
    if failover:
        _failover(config_path, as_json)
        return
    if nagios and deep:
        plugin_exit("UNKNOWN", "--deep does not go with --nagios (a deep check reads every file)")
    if nagios:
        _nagios(config_path)
        return
    _plain(config_path, as_json, deep)


@handle_errors
def _plain(config_path: str, as_json: bool, deep: bool = False) -> None:
    import asyncio

    from hasync.config import load

    cfg = load(config_path)
    doc = asyncio.run(check_once(cfg, deep))
    if as_json:
        print_json(doc)
    else:
        _print(doc)
    sys.exit(0 if doc["in_sync"] else 1)


FAILOVER_FIELDS = ("node", "role", "failover_safe", "failover_reason", "failover_detail")


@handle_errors
def _failover(config_path: str, as_json: bool) -> None:
    import asyncio

    from hasync.config import load

    doc = asyncio.run(failover_once(load(config_path)))
    if as_json:
        print_json(doc)
    elif doc["failover_safe"]:
        click.echo(f"failover safe: a switchover now would lose nothing ({doc['node']}, {doc['role']})")
    else:
        click.echo(f"failover NOT safe: {doc['failover_reason']}".replace("\n", " "))
    sys.exit(0 if doc["failover_safe"] is True else 1)


async def failover_once(cfg: Any) -> dict[str, Any]:
    """The failover verdict of the local agent (its status document), or without an agent the one of a
    check run here: `{"node", "role", "failover_safe", "failover_reason", "failover_detail"}`."""
    from hasync.errors import PeerAgentDown, PeerError
    from hasync.peer.client import AgentClient

    async with AgentClient(cfg.local_url(), cfg.token, cfg.peer.timeout_s, name="local") as local:
        try:
            doc = await local.status_document(timeout=max(30.0, 3 * cfg.peer.timeout_s))
        except PeerAgentDown:
            doc = None
    if doc is None:
        return await _standalone(cfg, failover=True)
    if not isinstance(doc.get("failover_safe"), bool):
        raise PeerError("the local agent's status carries no failover verdict (an older agent?)")
    return {k: doc.get(k) for k in FAILOVER_FIELDS}


def _nagios(config_path: str) -> None:
    """The plugin: every outcome is one line on stdout and exit 0, 2 or 3 (never 1, never 2 for usage)."""
    import asyncio

    from hasync.errors import HasyncError

    try:
        line, code = asyncio.run(_nagios_answer(config_path))
    except HasyncError as exc:
        plugin_exit("UNKNOWN", exc.message)
    except KeyboardInterrupt:
        plugin_exit("UNKNOWN", "interrupted")
    except Exception as exc:  # a plugin answers whatever happens: a bug is UNKNOWN with its message
        plugin_exit("UNKNOWN", f"internal error: {type(exc).__name__}: {exc}")
    click.echo(line)
    sys.exit(code)


async def _nagios_answer(config_path: str) -> tuple[str, int]:
    from hasync.check import Verdict, nagios_line
    from hasync.config import load
    from hasync.errors import PeerAgentDown

    cfg = load(config_path)
    try:
        doc = await check_once(cfg, fallback=False)
    except PeerAgentDown as exc:
        # No agent, no replication: whatever a check run here would find, the pair is not being kept
        # in sync. The peer's check reports this node with the same cause.
        return nagios_line(
            "CRITICAL",
            f"peer_agent_down: the hasync agent of this node ({cfg.node.name}) is not running, "
            f"nothing is replicated ({exc.message})",
        )
    return Verdict.from_json(doc).nagios()


async def check_once(cfg: Any, deep: bool = False, fallback: bool = True) -> dict[str, Any]:
    """Ask the local agent to check (`deep`: after a full audit of both nodes), or check in this
    process when no agent runs (PeerAgentDown without `fallback`)."""
    from hasync.audit import DEEP_TIMEOUT_S
    from hasync.errors import PeerAgentDown
    from hasync.peer.client import AgentClient
    from hasync.peer.protocol import API

    timeout = 2 * DEEP_TIMEOUT_S if deep else max(30.0, cfg.check.interval_s)
    async with AgentClient(cfg.local_url(), cfg.token, cfg.peer.timeout_s, name="local") as local:
        try:
            doc: dict[str, Any] = await local.json("POST", f"{API}/check", {"deep": True} if deep else None, timeout)
            return doc
        except PeerAgentDown:
            if not fallback:
                raise
    return await _standalone(cfg, deep)


async def _standalone(cfg: Any, deep: bool = False, failover: bool = False) -> dict[str, Any]:
    """The check run here, over this node's Node (no HTTP app), recorded in its alarm store; with
    `failover`, the failover verdict after it (FAILOVER_FIELDS)."""
    from hasync import halog
    from hasync.config import ensure_dirs
    from hasync.fsutil import StateLock
    from hasync.node import Node

    ensure_dirs(cfg)
    halog.setup(cfg.node.log_dir, cfg.log.max_bytes, cfg.log.backup_count, cfg.log.level, stderr=False)
    lock = StateLock(cfg.node.state_dir)
    lock.acquire("check")  # it may remove leftover temp files: never beside another writer
    node = Node(cfg)
    try:
        await node.open_alarms(run_dispatcher=False, guarded=False)
        await node.role.prepare_once()
        if failover:
            v = await node.run_check()
            doc = {**node.identity(), **(await node.role.failover_alone(v)).to_json()}
        else:
            doc = await node.deep_check() if deep else (await node.run_check()).to_json()
        if node.dispatcher is not None:
            await node.dispatcher.flush_once()
        return doc
    finally:
        await node.close()
        lock.release()


def _print(d: dict[str, Any]) -> None:
    for n in (d.get("audit") or {}).get("nodes", {}).values():
        if "error" in n:
            click.echo(f"audit of {n['node']}: not run: {n['error']}")
            continue
        click.echo(
            f"audit of {n['node']} ({n['role']}): {n['files']} files, {human_bytes(n['bytes'])} read in "
            f"{n['duration_s']:.1f} s, {len(n['findings'])} difference(s) found and repaired"
        )
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
