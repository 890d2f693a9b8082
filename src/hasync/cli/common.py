"""What every command shares: the config option, JSON output, error exits."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from hasync.config import DEFAULT_CONFIG

F = TypeVar("F", bound=Callable[..., Any])

config_option = click.option(
    "-c",
    "--config",
    "config_path",
    default=DEFAULT_CONFIG,
    show_default=True,
    metavar="FILE",
    help="the node's config file",
)
json_option = click.option("--json", "as_json", is_flag=True, help="print one JSON document on stdout")


def fail(message: str, code: int) -> None:
    click.echo(f"hasync: error: {message}", err=True)
    sys.exit(code)


def handle_errors(fn: F) -> F:
    """Turn hasync errors into one line on stderr and the error's exit code; no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from hasync.errors import HasyncError

        try:
            return fn(*args, **kwargs)
        except HasyncError as exc:
            fail(exc.message, exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper  # type: ignore[return-value]


def print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, ensure_ascii=False, default=str))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def plugin_exit(state: str, text: str) -> NoReturn:
    """Print the plugin line of an answer without a verdict and exit with its code (also the group's
    answer to a command-line error with `--nagios`, `hasync.cli._Hasync`).
    Here, not in cli/check.py: the group imports no command module for it."""
    from hasync.check import nagios_line

    line, code = nagios_line(state, text)
    click.echo(line)
    sys.exit(code)
