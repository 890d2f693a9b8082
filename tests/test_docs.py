"""The docs keep up with the code, one case per name (as Datasette's tests/test_docs.py): every qualified
config key, cause, error code, route, command and command flag is documented where a reader looks for it.

The names come from the code itself: the pydantic models of the config, the `Cause` enum, the
`HasyncError` tree, the agent's real aiohttp router and the click group. Each is looked up in its
document's own place (a key in the table under its TOML table's heading, a route as an endpoint
heading, ...), so a name mentioned elsewhere does not pass for documented.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
import tempfile
import types
import typing
from pathlib import Path

import click
import pytest
from pydantic import BaseModel

import hasync
from hasync import config
from hasync.agent.app import Agent
from hasync.cli import main
from hasync.demo import write_pair
from hasync.errors import Cause, HasyncError
from hasync.node import Node

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NONE = "\u2013"  # the en dash of a table cell that does not apply
KEY_ROW = re.compile(r"^\| `([^`]+)` \|(.*)$", re.M)


def load_script(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLI_DOCS = load_script("cli_docs")


def section(text: str, title: str) -> str:
    """The part of a markdown document under the heading that contains `title`, up to the next heading
    of the same or a higher level."""
    m = re.search(rf"^(#+) [^\n]*{re.escape(title)}[^\n]*$", text, re.M)
    assert m, f"no heading with {title!r}"
    end = re.compile(rf"^#{{1,{len(m.group(1))}}} ", re.M).search(text, m.end())
    return text[m.end() : end.start() if end else len(text)]


def rows(text: str) -> dict[str, list[str]]:
    """The table rows of `text` whose first cell is one `name`: name -> the other cells."""
    return {m.group(1): [c.strip() for c in m.group(2).split(" | ")] for m in KEY_ROW.finditer(text)}


# -- config keys: docs/configuration.md ------------------------------------------------------------


def models_in(annotation: object) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds: itself, or inside `X | None`, `tuple[X, ...]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in models_in(arg)]


def config_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key of the config file, qualified by its tables: `peer.hostname`, `sync.dirs.name`."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        key = prefix + name
        keys.append(key)
        for inner in models_in(field.annotation):
            keys += config_keys(inner, key + ".")
    return keys


def documented_keys() -> dict[str, set[str]]:
    """docs/configuration.md: TOML table ('' for the top level, "Sections") -> the keys of its key table.

    A key table belongs to the heading above it: `### [peer]`, `#### [[sync.dirs]]`, `## Sections`."""
    out: dict[str, set[str]] = {}
    table: str | None = None
    for block in re.split(r"^(#+ .*)$", (DOCS / "configuration.md").read_text(), flags=re.M):
        if block.startswith("#"):
            m = re.fullmatch(r"#+ `\[\[?([a-z_.]+)\]\]?`", block.strip())
            table = m.group(1) if m else "" if block.strip() == "## Sections" else None
        elif table is not None and "| key |" in block:
            out.setdefault(table, set()).update(rows(block))
    return out


CONFIG_KEYS = config_keys(config.Config)
DOCUMENTED_KEYS = documented_keys()


@pytest.mark.parametrize("key", CONFIG_KEYS)
def test_config_key_is_documented(key: str) -> None:
    table, _, name = key.rpartition(".")
    where = f"under the heading `[{table}]`" if table else "in the Sections table"
    assert name in DOCUMENTED_KEYS.get(table, set()), f"docs/configuration.md has no row `{name}` {where}"


def test_configuration_documents_no_key_the_config_lacks() -> None:
    documented = {f"{table}.{k}" if table else k for table, keys in DOCUMENTED_KEYS.items() for k in keys}
    assert not documented - set(CONFIG_KEYS), "documented but not in src/hasync/config.py"


# -- causes: docs/operations.md, "Alarm causes" ------------------------------------------------------


@pytest.mark.parametrize("cause", list(Cause), ids=str)
def test_cause_is_in_the_operations_guide(cause: Cause) -> None:
    table = rows(section((DOCS / "operations.md").read_text(), "Alarm causes and what hasync does"))
    assert cause.value in table, f"docs/operations.md, 'Alarm causes': no row for `{cause.value}`"


# -- error codes: docs/protocol.md section 4 ---------------------------------------------------------


def error_classes() -> dict[str, type[HasyncError]]:
    """Every HasyncError subclass of the package, by code (imports every module to find them all)."""
    for mod in pkgutil.walk_packages(hasync.__path__, "hasync."):
        if not mod.name.endswith("__main__"):
            importlib.import_module(mod.name)
    out: dict[str, type[HasyncError]] = {}
    todo: list[type[HasyncError]] = [HasyncError]
    while todo:
        cls = todo.pop()
        out.setdefault(cls.code, cls)  # a subclass with its parent's code (PeerStarting) is the same answer
        todo += cls.__subclasses__()
    return out


ERRORS = error_classes()


@pytest.mark.parametrize("code", sorted(ERRORS))
def test_error_code_is_in_the_protocol(code: str) -> None:
    cls = ERRORS[code]
    table = rows(section((DOCS / "protocol.md").read_text(), "Errors"))
    assert code in table, f"docs/protocol.md section 4: no row for `{code}` ({cls.__module__}.{cls.__name__})"
    status, exit_code = table[code][0], table[code][1]
    assert status == str(cls.http_status), f"`{code}`: documented HTTP {status}, the code answers {cls.http_status}"
    assert exit_code in (NONE, str(cls.exit_code)), f"`{code}`: documented exit {exit_code}, the code {cls.exit_code}"


# -- routes: docs/protocol.md section 7 --------------------------------------------------------------


def agent_routes() -> list[tuple[str, str]]:
    """(method, path) of every route of the agent's real router (HEAD: aiohttp's, with each GET)."""
    with tempfile.TemporaryDirectory(prefix="hasync-docs-") as base:
        pair = write_pair(Path(base))
        app = Agent(Node(config.load(pair.config_a))).app()
        routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    return sorted((m, p) for m, p in routes if m != "HEAD")


ROUTES = agent_routes()
ENDPOINT = re.compile(r"^### [\d.]+ `([A-Z]+) (/\S*)`$", re.M)


@pytest.mark.parametrize("route", ROUTES, ids=" ".join)
def test_route_is_an_endpoint_of_the_protocol(route: tuple[str, str]) -> None:
    documented = set(ENDPOINT.findall((DOCS / "protocol.md").read_text()))
    assert route in documented, f"docs/protocol.md section 7 has no heading `{route[0]} {route[1]}`"


def test_the_protocol_documents_no_route_the_agent_lacks() -> None:
    documented = set(ENDPOINT.findall((DOCS / "protocol.md").read_text()))
    assert documented and not documented - set(ROUTES), "endpoints in docs/protocol.md that the agent does not serve"


# -- commands and flags: docs/operations.md section 4, docs/cli.md, README.md ----------------------


COMMANDS: list[tuple[str, ...]] = CLI_DOCS.commands()


def command(words: tuple[str, ...]) -> click.Command:
    cmd: click.Command = main
    for w in words:
        assert isinstance(cmd, click.Group)
        cmd = cmd.commands[w]
    return cmd


def command_row(words: tuple[str, ...]) -> str:
    """The row of the command table in docs/operations.md section 4."""
    name = " ".join(("hasync", *words))
    text = section((DOCS / "operations.md").read_text(), "Commands")
    found = [line for line in text.splitlines() if line.startswith(f"| `{name}`") or line.startswith(f"| `{name} ")]
    assert len(found) == 1, f"docs/operations.md section 4: {len(found)} rows for `{name}`"
    return found[0]


@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
def test_command_is_documented(words: tuple[str, ...]) -> None:
    name = " ".join(("hasync", *words))
    command_row(words)
    assert f"## {name}\n" in (DOCS / "cli.md").read_text(), f"docs/cli.md has no section for {name}"
    assert name in (ROOT / "README.md").read_text(), f"README.md does not mention {name}"
    assert command(words).help, f"{name} has no help text"


def flags() -> list[typing.Any]:
    """One case per flag of the group and of each command: `pytest -k "collect --output"`."""
    return [
        pytest.param(words, p, id=" ".join((*words, p.opts[-1])))
        for words in [(), *COMMANDS]
        for p in command(words).params
        if isinstance(p, click.Option)
    ]


@pytest.mark.parametrize("words, option", flags())
def test_flag_is_documented(words: tuple[str, ...], option: click.Option) -> None:
    """A flag has a help text (docs/cli.md shows it) and is in the command's row of operations.md section 4.

    `-c/--config` is explained once for every command above the table; the group's own flags in the
    paragraph below it."""
    name = " ".join(("hasync", *words))
    assert option.help, f"{name} {option.opts[-1]} has no help text"
    if words and option.opts == ["-c", "--config"]:
        text = section((DOCS / "operations.md").read_text(), "Commands")
        assert "Every command takes `-c/--config FILE`" in text
        return
    where = command_row(words) if words else section((DOCS / "operations.md").read_text(), "Commands")
    shown = [o for o in option.opts if re.search(rf"`[^`]*{re.escape(o)}\b", where)]
    assert shown, f"docs/operations.md section 4 does not show {name} {'/'.join(option.opts)}"


def test_the_cli_reference_is_current() -> None:
    assert (DOCS / "cli.md").read_text() == CLI_DOCS.render(), "docs/cli.md: run python scripts/cli_docs.py"


def test_readme_has_the_two_commands_and_ci_runs_the_same() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/demo.sh" in readme and "bash scripts/test.sh" in readme
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
