"""`hasync demo`: the embedded default, a two-node pair on this machine."""

from __future__ import annotations

import click

from hasync.cli.common import handle_errors


@click.command()
@click.option("--dir", "work_dir", default="hasync-demo", show_default=True, help="working folder")
@handle_errors
def demo(work_dir: str) -> None:
    """Run a two-node pair on 127.0.0.1 and show it replicating live changes."""
    from hasync.demo import run

    run(work_dir)
