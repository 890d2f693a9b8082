"""PostgreSQL fixtures for tests that need a real server; import them into a conftest to use them.

With HASYNC_TEST_PG_URL set, its server is used; otherwise, when the PostgreSQL
15 server binaries are installed, `scripts/pg.sh` starts a throwaway server on a
free port for the session (as user postgres when run as root) and removes it at
the end. Either way the session works in a database of its own, dropped at the
end (`pg_database_url`), and each test that asks for `pg_schema_url` in a schema
of its own (the URL sets search_path), dropped after it. When neither is possible
the tests are skipped with the reason (CI turns skips into failures).
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
import pytest

from .receivers import free_port

PG_BIN = Path(os.environ.get("HASYNC_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "pg.sh"


def url_with(url: str, *, dbname: str | None = None, search_path: str | None = None) -> str:
    """`url` pointing at another database and/or with a search_path."""
    parts = urlsplit(url)
    path = f"/{quote(dbname)}" if dbname is not None else parts.path
    query = parse_qsl(parts.query, keep_blank_values=True)
    if search_path is not None:
        query = [(k, v) for k, v in query if k != "options"] + [("options", f"-c search_path={search_path}")]
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(query, quote_via=quote), parts.fragment))


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A superuser URL of a running PostgreSQL server."""
    env_url = os.environ.get("HASYNC_TEST_PG_URL")
    if env_url:
        yield env_url
        return
    if not (PG_BIN / "initdb").exists() or not PG_SCRIPT.exists():
        pytest.skip(
            "PostgreSQL store tests need HASYNC_TEST_PG_URL (e.g. from scripts/pg.sh start) or the PostgreSQL 15"
            f" server binaries in {PG_BIN} to start a throwaway server"
        )
    port = free_port()
    env = {
        **os.environ,
        "HASYNC_PG_PORT": str(port),
        "HASYNC_PG_DIR": f"/tmp/hasync-pg-test-{os.getpid()}-{port}",
        "HASYNC_PG_PASSWORD": secrets.token_urlsafe(12),
    }
    started = subprocess.run(
        ["bash", str(PG_SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    try:
        if started.returncode != 0:
            pytest.fail(f"scripts/pg.sh start failed: {started.stderr.strip()}", pytrace=False)
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(PG_SCRIPT), "stop"], env=env, capture_output=True, timeout=120, check=False)


@pytest.fixture(scope="session")
def pg_database_url(pg_server_url: str) -> Iterator[str]:
    """A fresh database for this test session, dropped at its end."""
    name = f"hasync_test_{secrets.token_hex(4)}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        yield url_with(pg_server_url, dbname=name)
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


@pytest.fixture
def pg_schema_url(pg_database_url: str) -> Iterator[str]:
    """A URL whose tables land in a schema of this test's own."""
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(pg_database_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"'.encode())
    try:
        yield url_with(pg_database_url, search_path=schema)
    finally:
        with psycopg.connect(pg_database_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'.encode())
