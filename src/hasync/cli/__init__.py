"""The `hasync` command line: one module per command, heavy imports inside the commands."""

from __future__ import annotations

import click

from hasync import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hasync")
def main() -> None:
    """hasync keeps the standby node of an active/standby pair an exact copy of the active."""


from hasync.cli import agent, alarms, check, collect, demo, diagnose, status, sync  # noqa: E402,F401  (registers the commands)
