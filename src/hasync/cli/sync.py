"""`hasync sync --once`: reconcile the standby with the active now."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from hasync.cli.common import config_option, handle_errors, human_bytes, json_option, print_json
from hasync.cli.progress import Bars

if TYPE_CHECKING:  # a command imports the replication code only when it runs (start-up time)
    from hasync.replication.standby import SyncResult


@click.command()
@config_option
@click.option("--once", is_flag=True, help="reconcile once and exit (the only mode for now)")
@click.option(
    "--wait-s",
    type=click.FloatRange(0, 86_400),
    default=600.0,
    show_default=True,
    help="wait this long for an active agent that is still scanning its sync dirs at start",
)
@json_option
@handle_errors
def sync(config_path: str, once: bool, wait_s: float, as_json: bool) -> None:
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
    lock, quick = _claim_standby(cfg)
    result = asyncio.run(_sync(cfg, lock, quick, not as_json and sys.stderr.isatty(), wait_s))
    if as_json:
        print_json(result)
    else:
        _print(result)
    sys.exit(0 if result["in_sync"] else 1)


def _claim_standby(cfg: Any) -> tuple[Any, Any]:
    """On the standby with no agent running: take the state lock, and start the quick check
    (before the event loop starts any thread: it forks). (None, None) when the agent runs
    (it holds the lock for its lifetime) or this is the active node."""
    from hasync.errors import LockHeld
    from hasync.fsutil import StateLock
    from hasync.quickcheck import QuickCheck
    from hasync.roles import node_role

    if node_role(cfg) == "active":
        return None, None
    from hasync.config import ensure_dirs

    ensure_dirs(cfg)  # a state dir it cannot write is a config error, not a traceback
    lock = StateLock(cfg.node.state_dir)
    try:
        lock.acquire("sync --once")
    except LockHeld:
        return None, None
    from hasync.manifest import Excluder, cache_path

    dirs = {d.name: (d.path, cache_path(cfg.node.state_dir, d.name)) for d in cfg.sync.dirs}
    quick = QuickCheck.prepare(dirs, Excluder(cfg.sync.exclude))
    if quick is not None:
        quick.start()
    return lock, quick


async def _active_up(info: Any, name: str, deadline: float) -> bool:
    """After a sync found the active's agent starting (scanning its sync dirs: it answers 503): wait
    for it until `deadline` (monotonic), saying so on stderr every 5 s. True when it answers now;
    False at the deadline or on any other failure (the sync reports it)."""
    import asyncio
    import time

    from hasync.errors import PeerError, PeerStarting

    if time.monotonic() >= deadline:
        return False
    t0 = said = time.monotonic()
    click.echo(f"waiting for {name}: its agent is starting (scanning its sync dirs)", err=True)
    while time.monotonic() < deadline:
        await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        try:
            await info()
            return True
        except PeerStarting:
            if time.monotonic() - said >= 5.0:
                said = time.monotonic()
                click.echo(f"waiting for {name}: still starting, {said - t0:.0f} s", err=True)
        except PeerError:
            return False
    return False


async def _sync(cfg: Any, lock: Any, quick: Any, show_progress: bool, wait_s: float = 0.0) -> dict[str, Any]:
    import time

    from hasync.errors import PeerAgentDown
    from hasync.fsutil import StateLock
    from hasync.peer.client import AgentClient
    from hasync.roles import node_role

    deadline = time.monotonic() + wait_s
    bar = _Bar(show_progress)
    try:
        if lock is not None:
            return await _standalone(cfg, bar, lock, quick, deadline)
        me_active = node_role(cfg) == "active"
        if me_active:
            target = AgentClient(cfg.peer_url(), cfg.token, cfg.peer.timeout_s, name=cfg.peer.name)
        else:
            target = AgentClient(cfg.local_url(), cfg.token, cfg.peer.timeout_s, name="local")
        async with target:
            try:
                result = await _via_agent(target, bar)
                while result.get("peer_starting"):
                    url, name = (cfg.local_url(), cfg.node.name) if me_active else (cfg.peer_url(), cfg.peer.name)
                    async with AgentClient(url, cfg.token, cfg.peer.timeout_s, name=name) as active:
                        if not await _active_up(active.peer_info, name, deadline):
                            break
                    result = await _via_agent(target, bar)
                result.pop("peer_starting", None)
                return result
            except PeerAgentDown:
                if target.name != "local":
                    raise
        # The lock was held but the agent does not answer: it stopped since, or another command
        # holds the lock (then this says which).
        lock = StateLock(cfg.node.state_dir)
        lock.acquire("sync --once")
        return await _standalone(cfg, bar, lock, None, deadline)
    finally:
        bar.close()


async def _via_agent(client: Any, bar: _Bar) -> dict[str, Any]:
    from hasync.peer.protocol import API

    result: dict[str, Any] = {}
    async for event in client.stream_json("POST", f"{API}/sync"):
        if event.get("event") == "result":
            result = event
        else:
            bar.event(event)
    result.pop("event", None)
    result.setdefault("method", "agent")
    return result


async def _standalone(cfg: Any, bar: _Bar, lock: Any, quick: Any, deadline: float = 0.0) -> dict[str, Any]:
    """Reconcile in this process, holding the state lock: the quick check first, else the full scan.
    An active still starting is waited for until `deadline`."""
    from hasync import halog
    from hasync.errors import PeerStarting
    from hasync.replication.standby import StandbySide

    halog.setup(cfg.node.log_dir, cfg.log.max_bytes, cfg.log.backup_count, cfg.log.level, stderr=False)
    side = StandbySide(cfg)
    try:
        if quick is not None:
            fast = await _quick(cfg, side, quick)
            if fast is not None and not isinstance(side.peer_error, PeerStarting):
                return fast
        await side.load_local()
        if isinstance(side.peer_error, PeerStarting):
            await _active_up(side.client.peer_info, cfg.peer.name, deadline)
        r = await side.reconcile(progress=bar.event)
        while isinstance(side.peer_error, PeerStarting) and await _active_up(
            side.client.peer_info, cfg.peer.name, deadline
        ):
            r = await side.reconcile(progress=bar.event)
        await asyncio_to_thread(side.save_caches)
        await asyncio_to_thread(side.save_quick_indexes)
    finally:
        await side.client.close()
        lock.release()
    return _result("full", r)


async def _quick(cfg: Any, side: Any, quick: Any) -> dict[str, Any] | None:
    """The no-change fast path: the local copy is what its index says (the quick check, in its
    forked workers) and the active's roots are the index's roots. None: take the full path."""
    import asyncio

    from hasync.errors import PeerError
    from hasync.replication.standby import SyncResult

    checked = asyncio.ensure_future(asyncio.to_thread(quick.finish))
    try:
        info = await side.client.peer_info(owner=cfg.is_root)
    except PeerError as exc:
        side.peer_failed(exc)
        return _result("quick", SyncResult(False, cause=exc.cause, message=exc.message))
    finally:
        unchanged = await checked  # the worker is always reaped
    if not unchanged or not info.is_active:
        return None  # the full path says what differs (or that the configs disagree on the roles)
    for name, (root, with_owner) in quick.roots().items():
        if info.roots.get(name) != root or with_owner != info.with_owner:
            return None
    return _result("quick", SyncResult(True))


def _result(method: str, result: SyncResult) -> dict[str, Any]:
    """The sync's JSON document: its result (as the agent would answer it) and how it was found."""
    return {"method": method, **result.to_json()}


async def asyncio_to_thread(fn: Any) -> None:
    import asyncio

    await asyncio.to_thread(fn)


class _Bar(Bars):
    """The sync's progress on one bar: bytes and files, from the first event that knows the totals."""

    def event(self, ev: dict[str, Any]) -> None:
        if ev.get("total_bytes") or ev.get("total_files") or self.started:
            self.update("syncing", ev.get("bytes", 0), ev.get("total_bytes"), note=f"{ev.get('files', 0)} files")


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
