"""The `hasync` command line: one module per command, heavy imports inside the commands."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from hasync import __version__
from hasync.cli import agent, alarms, check, collect, demo, diagnose, roles, status, sync
from hasync.cli.common import plugin_exit


def wants_nagios(args: Sequence[str]) -> bool:
    """`--nagios` (or `--nagios=...`) anywhere in the command line: every answer is a plugin line."""
    return any(a == "--nagios" or a.startswith("--nagios=") for a in args)


class _Hasync(click.Group):
    """The group. With `--nagios` anywhere in argv an error of the command line (an unknown option before
    the command name, `--nagios=1`, a missing argument) is a plugin answer too: `HASYNC UNKNOWN - <error>`
    on stdout, exit 3 (SPEC §3), not a usage message on stderr and exit 2, which Nagios shows as CRITICAL
    "(No output on stdout)"."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if not (standalone_mode and wants_nagios(argv)):
            return super().main(argv, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            plugin_exit("UNKNOWN", exc.format_message())
        except click.Abort:
            plugin_exit("UNKNOWN", "interrupted")
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Hasync, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hasync")
def main() -> None:
    """hasync keeps the standby node of an active/standby pair an exact copy of the active."""


for _module in (agent, alarms, check, collect, demo, diagnose, status, sync):
    main.add_command(getattr(_module, _module.__name__.rpartition(".")[2]))
main.add_command(roles.switchover)
main.add_command(roles.role)
