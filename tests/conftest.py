"""Fixtures: a pair of real agents on 127.0.0.1 in a temp dir."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pairlib import PairEnv, cleanup_base, make_base, new_pair

# PostgreSQL fixtures (pg_server_url, pg_database_url, pg_schema_url) for every test.
pytest_plugins = ["alarms.pgfixtures"]


@pytest.fixture
def base() -> Iterator[Path]:
    b = make_base()
    yield b
    cleanup_base(b)


@pytest.fixture
def make_pair(base: Path) -> Iterator[Callable[..., PairEnv]]:
    made: list[PairEnv] = []

    def factory(**kwargs: object) -> PairEnv:
        env = new_pair(base, **kwargs)  # type: ignore[arg-type]
        made.append(env)
        return env

    yield factory
    for env in made:
        env.stop()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI (HASYNC_FAIL_ON_SKIP=1) a skipped test fails the run; so does collecting none."""
    import os

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or os.environ.get("HASYNC_FAIL_ON_SKIP") != "1":
        return
    skipped = reporter.stats.get("skipped", [])
    if skipped:
        reporter.write_line(f"HASYNC_FAIL_ON_SKIP: {len(skipped)} test(s) skipped; every test must run in CI", red=True)
        for rep in skipped:
            reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else ""
            reporter.write_line(f"  skipped: {rep.nodeid}: {reason}")
        session.exitstatus = 1
    if session.testscollected == 0:
        session.exitstatus = 1
