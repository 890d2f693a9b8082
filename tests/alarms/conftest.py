"""Fixtures of the alarm tests: stores of each backend (SQLite, PostgreSQL; see pgfixtures for the server)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from hasync.alarms.backends import open_store
from hasync.alarms.store import AlarmStore

__all__ = ["Stores"]


@dataclass
class Stores:
    """Opens stores of one backend on one location: several at once play several agents (or restarts)."""

    backend: str
    spec: str
    state_dir: Path
    opened: list[AlarmStore] = field(default_factory=list)

    def open(self) -> AlarmStore:
        store = open_store(self.spec, self.state_dir)
        self.opened.append(store)
        return store

    def sql(self, statement: str) -> list[tuple[object, ...]]:
        """Run one statement on a connection of the test's own, bypassing the store."""
        if self.backend == "sqlite":
            import sqlite3

            conn = sqlite3.connect(self.state_dir / "alarms.db", isolation_level=None)
            try:
                return list(conn.execute(statement))
            finally:
                conn.close()
        with psycopg.connect(self.spec, autocommit=True) as pg:
            cur = pg.execute(statement.encode())
            return list(cur.fetchall()) if cur.description else []


@pytest.fixture(params=["sqlite", "postgresql"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    spec = "sqlite" if request.param == "sqlite" else request.getfixturevalue("pg_schema_url")
    made = Stores(request.param, spec, tmp_path / "state")
    yield made
    for store in made.opened:
        store.close()


@pytest.fixture
def store(stores: Stores) -> AlarmStore:
    return stores.open()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[AlarmStore]:
    s = open_store("sqlite", tmp_path / "state")
    yield s
    s.close()
