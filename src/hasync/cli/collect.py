"""`hasync collect`: the fault-information bundle of both nodes for the minutes around an alarm or an instant."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from hasync.cli.common import config_option, handle_errors, human_bytes, json_option, print_json
from hasync.cli.progress import Bars
from hasync.errors import HasyncError, UsageError

if TYPE_CHECKING:
    from hasync.config import Config


@click.command()
@config_option
@click.option("--alarm", "fingerprint", metavar="FP", help="center the window on this alarm's raise time")
@click.option("--at", "at_text", metavar="TIME", help="center the window on TIME: ISO 8601 (no offset: local) or 'now'")
@click.option("--before", default="10m", show_default=True, metavar="DURATION", help="window start before the instant")
@click.option("--after", default="10m", show_default=True, metavar="DURATION", help="window end after the instant")
@click.option(
    "-o",
    "--output",
    metavar="PATH",
    help="the bundle file, or a directory for the default name hasync-bundle-<node>-<YYYYmmddTHHMMSS>.tar.gz "
    "(default: in the current directory)",
)
@click.option(
    "--max-bytes",
    default="200MB",
    show_default=True,
    metavar="SIZE",
    help="size guard on the bundle's content: past it each node's oldest log lines are left out",
)
@json_option
@handle_errors
def collect(
    config_path: str,
    fingerprint: str | None,
    at_text: str | None,
    before: str,
    after: str,
    output: str | None,
    max_bytes: str,
    as_json: bool,
) -> None:
    """Write a .tar.gz with both nodes' HA log lines in the window, their alarms with diagnoses, status
    snapshots and configs (secrets masked), and manifest.json. The peer's part comes through its agent,
    with its clock offset measured and applied; when the peer cannot be reached the bundle holds this
    node only and says why. Exit 0 when the bundle is written."""
    import asyncio

    from hasync import collect as bundle
    from hasync.config import load

    if (fingerprint is None) == (at_text is None):
        raise UsageError("give exactly one of --alarm FP and --at TIME")
    window_before, window_after = bundle.parse_duration(before), bundle.parse_duration(after)
    limit = bundle.parse_size(max_bytes)
    at = bundle.parse_time(at_text) if at_text is not None else None
    cfg = load(config_path)
    alarm: dict[str, Any] | None = None
    if fingerprint is not None:
        doc, found_on = asyncio.run(bundle.find_alarm(cfg, fingerprint))
        at = bundle.parse_time(doc["raised_at"])
        alarm = {k: doc.get(k) for k in ("fingerprint", "raised_at", "cleared_at", "cause", "host_name")}
        alarm["found_on"] = found_on
    assert at is not None
    window = bundle.Window.around(at, window_before, window_after)
    target = bundle.target_path(output, cfg.node.name, at)
    role = _role(cfg)
    try:
        with Bars(enabled=not as_json and sys.stderr.isatty()) as bars:
            run = bundle.collect(cfg, window, target, role=role, max_bytes=limit, alarm=alarm, progress=bars.update)
            result = asyncio.run(run)
    except OSError as exc:
        raise HasyncError(f"cannot write the bundle in {target.parent}: {exc.strerror or exc}") from None
    for w in result.warnings:
        click.echo(f"hasync: warning: {w}", err=True)
    if as_json:
        print_json({"bundle": str(result.path), "manifest": result.manifest})
    else:
        _print(result.path, result.manifest)
    sys.exit(0)


def _role(cfg: Config) -> str | None:
    """This node's role for the bundle, as its role provider says; None when it cannot say."""
    from hasync.roles import node_role  # inside, as every heavy import of a command: CLI start-up time

    try:
        return node_role(cfg)
    except HasyncError:
        return None


def _print(path: Any, m: dict[str, Any]) -> None:
    size = sum(f["size"] for f in m["files"])
    click.echo(f"bundle {path}")
    click.echo(f"  window   {m['window']['start']} .. {m['window']['end']}")
    for n in m["nodes"]:
        if not n["reachable"]:
            click.echo(f"  {n['name']:<8} not collected")
            continue
        log = n.get("log", {})
        clock = "" if n["local"] else f", clock {n['clock_offset_s']:+.3f} s (corrected)"
        dropped = f", {log['dropped_lines']} oldest lines left out" if log.get("dropped_lines") else ""
        click.echo(f"  {n['name']:<8} {log.get('entries', 0)} log entries{dropped}{clock}")
    click.echo(f"  {len(m['files']) + 1} files, {human_bytes(size)} uncompressed")
