"""The docs keep up with the code: every config key, command, cause and route is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from hasync import config
from hasync.cli import main
from hasync.errors import Cause

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def model_keys(model: type[BaseModel]) -> set[str]:
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        keys.add(name)
        ann = field.annotation
        for inner in (ann, *getattr(ann, "__args__", ())):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                keys |= model_keys(inner)
    return keys


def test_every_config_key_is_in_the_configuration_reference() -> None:
    text = (DOCS / "configuration.md").read_text()
    missing = {k for k in model_keys(config.Config) if f"`{k}`" not in text}
    assert not missing, f"undocumented config keys: {sorted(missing)}"


@pytest.mark.parametrize("doc", ["README.md", "docs/operations.md"])
def test_every_command_is_documented(doc: str) -> None:
    text = (ROOT / doc).read_text()
    missing = [c for c in main.commands if f"hasync {c}" not in text]
    assert not missing, f"{doc} does not mention: {missing}"


def test_every_cause_is_in_the_operations_guide() -> None:
    text = (DOCS / "operations.md").read_text()
    missing = [c.value for c in Cause if f"`{c.value}`" not in text]
    assert not missing, f"causes missing from docs/operations.md: {missing}"


def test_every_route_is_in_the_protocol() -> None:
    routes = set()
    for src in (ROOT / "src" / "hasync" / "agent").rglob("*.py"):
        routes |= set(re.findall(r'add_(?:get|post|route)\((?:"[A-Z]+", )?f?"(?:\{API\})?([^"]+)"', src.read_text()))
    assert len(routes) >= 10
    text = (DOCS / "protocol.md").read_text()
    missing = sorted(r for r in routes if r not in text)
    assert not missing, f"routes missing from docs/protocol.md: {missing}"


def test_readme_has_the_two_commands_and_ci_runs_the_same() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/demo.sh" in readme and "bash scripts/test.sh" in readme
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
