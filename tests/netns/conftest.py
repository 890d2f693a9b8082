"""Fixtures of the network-namespace fault suite: a pair of hosts per test, torn down whatever happens.

Needs root (namespaces, veth, nftables, tmpfs). Without root every test is skipped with the reason;
CI runs as root with HASYNC_FAIL_ON_SKIP=1 (tests/conftest.py), so there a skip fails the run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from netns import nslib

# Figures of the last run (detection and clear times, bytes re-sent ...), per scenario; written to
# HASYNC_NETNS_FIGURES (default <tmp>/hasync-netns-figures.json) and shown at the end of the run.
FIGURES: dict[str, dict[str, Any]] = {}


def _missing_tools() -> list[str]:
    return [t for t in ("ip", "nft", "ping", "setpriv", "mount") if shutil.which(t) is None]


@pytest.fixture(scope="session", autouse=True)
def _netns_session() -> Iterator[None]:
    """Root and the tools are there; leftovers of a crashed earlier run are removed first."""
    if os.geteuid() != 0:
        pytest.skip("the netns fault suite needs root (network namespaces, veth, nftables, tmpfs); CI runs as root")
    missing = _missing_tools()
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)} (Debian: iproute2, nftables, iputils-ping, util-linux)")
    removed = nslib.cleanup_stale()
    if removed:
        print(f"\nremoved leftovers of an earlier run: {', '.join(removed)}")
    yield


@pytest.fixture
def netns_pair() -> Iterator[Callable[..., nslib.NsPair]]:
    """Factory: `netns_pair(**kwargs)` builds two hosts and their configs (see nslib.new_pair); the agents
    are started by the test. Everything is torn down after the test, failed or not."""
    made: list[nslib.NsPair] = []

    def factory(**kwargs: Any) -> nslib.NsPair:
        pair = nslib.new_pair(**kwargs)
        made.append(pair)
        return pair

    yield factory
    problems = [p for pair in made for p in pair.teardown()]
    assert not problems, f"left behind: {problems}"


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The measured figures of this scenario, reported at the end of the run."""
    doc: dict[str, Any] = {}
    FIGURES[request.node.name] = doc
    return doc


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    path = Path(os.environ.get("HASYNC_NETNS_FIGURES") or Path(tempfile.gettempdir()) / "hasync-netns-figures.json")
    path.write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")
    terminalreporter.section("netns fault suite: measured figures")
    for name, doc in FIGURES.items():
        shown = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in doc.items())
        terminalreporter.write_line(f"{name}: {shown}")
    terminalreporter.write_line(f"(written to {path})")
