"""`hasync alarms`: the active alarms of the pair (`--all`: with the cleared ones)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from hasync.cli.common import config_option, handle_errors, json_option, print_json


@click.command()
@config_option
@click.option("--all", "include_cleared", is_flag=True, help="include cleared alarms")
@json_option
@handle_errors
def alarms(config_path: str, include_cleared: bool, as_json: bool) -> None:
    """List alarm 45641 records of this node's store and, when reachable, the peer's."""
    import asyncio

    from hasync.config import load

    cfg = load(config_path)
    docs = asyncio.run(list_alarms(cfg, include_cleared))
    if as_json:
        print_json(docs)
    else:
        _print(docs, include_cleared)
    sys.exit(0)


async def list_alarms(
    cfg: Any, include_cleared: bool, enough: Callable[[list[dict[str, Any]]], bool] | None = None
) -> list[dict[str, Any]]:
    """This node's alarms and the peer's (newest first). The peer is not asked when the store is
    shared, or when `enough` says this node's own list already answers the caller."""
    import asyncio

    from hasync.alarms.backends import open_store
    from hasync.peer.client import AgentClient
    from hasync.urls import is_postgres_url

    store = await asyncio.to_thread(open_store, cfg.alarms.store, cfg.node.state_dir)
    try:
        rows = await asyncio.to_thread(store.history if include_cleared else store.active)
    finally:
        await asyncio.to_thread(store.close)
    docs: list[dict[str, Any]] = [a.to_json(diagnosis=True) for a in rows]
    if not is_postgres_url(cfg.alarms.store) and not (enough is not None and enough(docs)):
        async with AgentClient(cfg.peer_url(), cfg.token, min(5.0, cfg.peer.timeout_s), cfg.peer.name) as peer:
            return await peer.with_alarms(docs, include_cleared)
    return sorted(docs, key=lambda d: d["raised_at"], reverse=True)


def _print(docs: list[dict[str, Any]], include_cleared: bool) -> None:
    if not docs:
        click.echo("no alarms" if include_cleared else "no active alarms")
        return
    for d in docs:
        state = "ACTIVE " if d["cleared_at"] is None else "cleared"
        click.echo(f"{state} {d['alarm_id']} {d['severity']}  {d['name']}")
        click.echo(
            f"        Source={d['source']} ServiceName={d['service_name']} RoleName={d['role_name']} "
            f"HostName={d['host_name']}"
        )
        click.echo(f"        cause {d['cause']}  raised {d['raised_at']}  cleared {d['cleared_at'] or '-'}")
        click.echo(f"        {d['additional_info']}")
        click.echo(f"        fingerprint {d['fingerprint']}")
