"""`hasync agent`: run the node agent in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import click

from hasync.cli.common import config_option, handle_errors


@click.command()
@config_option
@handle_errors
def agent(config_path: str) -> None:
    """Run this node's agent in the foreground; SIGTERM or Ctrl-C stops it within 5 s."""
    import asyncio

    from hasync import halog
    from hasync.agent.app import Agent
    from hasync.config import ensure_dirs, load
    from hasync.node import Node

    cfg = load(config_path)
    ensure_dirs(cfg)
    halog.setup(cfg.node.log_dir, cfg.log.max_bytes, cfg.log.backup_count, cfg.log.level)
    asyncio.run(Agent(Node(cfg)).run())
