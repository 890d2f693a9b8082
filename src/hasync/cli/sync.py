"""`hasync sync --once`: reconcile the standby with the active now."""

from __future__ import annotations

import sys
from typing import Any

import click

from hasync.cli import main
from hasync.cli.common import config_option, handle_errors, human_bytes, json_option, print_json


@main.command()
@config_option
@click.option("--once", is_flag=True, help="reconcile once and exit (the only mode for now)")
@json_option
@handle_errors
def sync(config_path: str, once: bool, as_json: bool) -> None:
    """Reconcile the standby with the active now; exit 0 when in sync, 1 when not.

    When this node's agent runs, the agent does the work (there is never a
    second writer); otherwise this process does it. On the active node the
    request goes to the standby's agent.
    """
    import asyncio

    from hasync.config import load
    from hasync.errors import UsageError

    if not once:
        raise UsageError("give --once (continuous sync is what `hasync agent` does)")
    cfg = load(config_path)
    result = asyncio.run(_sync(cfg, show_progress=not as_json and sys.stderr.isatty()))
    if as_json:
        print_json(result)
    else:
        _print(result)
    sys.exit(0 if result["in_sync"] else 1)


async def _sync(cfg: Any, show_progress: bool) -> dict[str, Any]:
    from hasync.agent.client import AgentClient
    from hasync.errors import PeerAgentDown
    from hasync.roles import provider

    bar = _Bar(show_progress)
    try:
        if provider(cfg).active_node() == cfg.node.name:
            target = AgentClient(cfg.peer_url(), cfg.token, cfg.peer.timeout_s, name=cfg.peer.name)
        else:
            target = AgentClient(cfg.local_url(), cfg.token, cfg.peer.timeout_s, name="local")
        async with target:
            try:
                return await _via_agent(target, bar)
            except PeerAgentDown:
                if target.name != "local":
                    raise
        return await _standalone(cfg, bar)
    finally:
        bar.close()


async def _via_agent(client: Any, bar: _Bar) -> dict[str, Any]:
    from hasync.protocol import API

    result: dict[str, Any] = {}
    async for event in client.stream_json("POST", f"{API}/sync"):
        if event.get("event") == "result":
            result = event
        else:
            bar.update(event)
    result.pop("event", None)
    return result


async def _standalone(cfg: Any, bar: _Bar) -> dict[str, Any]:
    from hasync import halog
    from hasync.agent.server import StateLock
    from hasync.replication.standby import StandbySide

    halog.setup(cfg.node.log_dir, cfg.log.max_bytes, cfg.log.backup_count, cfg.log.level, stderr=False)
    lock = StateLock(cfg.node.state_dir)
    lock.acquire("sync --once")
    side = StandbySide(cfg)
    try:
        await side.load_local()
        r = await side.reconcile(progress=bar.update)
        await asyncio_to_thread(side.save_caches)
    finally:
        await side.client.close()
        lock.release()
    return {
        "in_sync": r.in_sync,
        "files": r.files,
        "bytes": r.bytes,
        "deleted": r.deleted,
        "cause": None if r.cause is None else r.cause.value,
        "message": r.message,
        "errors": [e.as_json() for e in r.errors],
    }


async def asyncio_to_thread(fn: Any) -> None:
    import asyncio

    await asyncio.to_thread(fn)


class _Bar:
    """A progress bar on a terminal (files and bytes); silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None
        self._task: Any = None

    def update(self, ev: dict[str, Any]) -> None:
        if not self.enabled or (not ev.get("total_bytes") and not ev.get("total_files") and self._progress is None):
            return
        if self._progress is None:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("syncing"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TextColumn("{task.fields[files]} files"),
                TimeRemainingColumn(),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("sync", total=ev.get("total_bytes") or None, files=0)
        self._progress.update(self._task, completed=ev.get("bytes", 0), files=ev.get("files", 0))

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def _print(r: dict[str, Any]) -> None:
    done = f"{r.get('files', 0)} files ({human_bytes(r.get('bytes', 0))}) transferred, {r.get('deleted', 0)} deleted"
    if r["in_sync"]:
        click.echo(f"in sync: {done}")
        return
    click.echo(f"NOT in sync ({r.get('cause') or 'unknown'}): {done}")
    if r.get("message"):
        click.echo(f"  {r['message']}")
    for e in r.get("errors", []):
        click.echo(f"  {e['dir']}/{e['path']}: {e['cause']}: {e['reason']}")
