"""`hasync switchover` and `hasync role set`: role changes through this node's agent (SPEC §10)."""

from __future__ import annotations

import sys
from typing import Any

import click

from hasync.cli.common import config_option, fail, handle_errors, human_bytes, json_option, print_json

# The agent's part may take a last sync of many files: the CLI waits as long as the agent would.
WAIT_S = 900.0


def _confirm(what: str, as_json: bool) -> None:
    """`--force` on a terminal asks first (SPEC §10); a script (no terminal, or --json) is not asked."""
    if as_json or not (sys.stdin.isatty() and sys.stdout.isatty()):
        return
    click.echo(f"{what} even though the standby may lack files: they stay on the old active, in a backup set.")
    if not click.confirm("Go on?", default=False):
        fail("not confirmed; nothing changed", 1)


@click.command()
@config_option
@click.option("--force", is_flag=True, help="swap even when out of sync; what the new active lacks is logged")
@json_option
@handle_errors
def switchover(config_path: str, force: bool, as_json: bool) -> None:
    """Make the standby active: refused while it is out of sync, unless --force."""
    if force:
        _confirm("Switch over", as_json)
    _run(config_path, "/v1/switchover", {"force": force}, as_json)


@click.group()
def role() -> None:
    """The role of this node, set by an HA manager ([role] mode = "external")."""


@role.command(name="set")
@click.argument("new_role", metavar="active|standby", type=click.Choice(["active", "standby"]))
@config_option
@click.option("--force", is_flag=True, help="become active even when this node's copy may lack files")
@json_option
@handle_errors
def set_role(new_role: str, config_path: str, force: bool, as_json: bool) -> None:
    """Make this node active or standby, with the epoch rules and the refusal of `switchover`."""
    if force and new_role == "active":
        _confirm("Become active", as_json)
    _run(config_path, "/v1/role", {"role": new_role, "force": force}, as_json)


def _run(config_path: str, route: str, body: dict[str, Any], as_json: bool) -> None:
    import asyncio

    from hasync.config import load

    cfg = load(config_path)
    doc = asyncio.run(_ask(cfg, route, body))
    if as_json:
        print_json(doc)
    else:
        _print(doc)
    sys.exit(0 if doc.get("ok") else 1)


async def _ask(cfg: Any, route: str, body: dict[str, Any]) -> dict[str, Any]:
    from hasync.errors import PeerAgentDown
    from hasync.peer.client import AgentClient

    async with AgentClient(cfg.local_url(), cfg.token, cfg.peer.timeout_s, name="local") as local:
        try:
            doc: dict[str, Any] = await local.json("POST", route, body, timeout=WAIT_S)
        except PeerAgentDown as exc:
            return {"ok": False, "node": cfg.node.name, "reason": f"this node's agent is not running: {exc.message}"}
    return doc


def _print(d: dict[str, Any]) -> None:
    if not d.get("ok"):
        click.echo(f"hasync: refused: {d.get('reason')}", err=True)
        return
    lost = d.get("lost") or {}
    note = f" ({d['reason']})" if d.get("reason") else ""
    click.echo(f"{d.get('node')} is {d.get('role')} at epoch {d.get('epoch')}{note}")
    if d.get("forced") and (lost.get("files") or not lost.get("known", True)):
        if lost.get("known", True):
            click.echo(f"forced: the new active lacks {lost['files']} path(s), {human_bytes(lost['bytes'])}:")
            for p in lost.get("paths", [])[:20]:
                click.echo(f"  {p['dir']}/{p['path']} ({p['what']})")
        else:
            click.echo("forced: what the new active lacks is unknown (the peer could not be asked)")
    if d.get("duration_s") is not None:
        click.echo(f"done in {d['duration_s']:.2f} s")
