"""Opening the alarm store `[alarms].store` names: SQLite (``state_dir/alarms.db``) or PostgreSQL by URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hasync.alarms.pg_store import PgStore
from hasync.alarms.sqlite_store import SqliteStore
from hasync.alarms.store import SQLITE_FILE, AlarmStore, StoreError
from hasync.masking import mask_url
from hasync.urls import check_store


def store_location(store: str, state_dir: Path) -> str:
    """Where the store `[alarms].store` names is, safe to show (password masked): `AlarmStore.location`."""
    return f"sqlite:{Path(state_dir) / SQLITE_FILE}" if store == "sqlite" else mask_url(store)


def open_store(store: str, state_dir: Path, **options: Any) -> AlarmStore:
    """Open (creating and migrating as needed) the store `[alarms].store` names.

    ``"sqlite"`` is ``state_dir/alarms.db``; a ``postgresql://`` URL is a PostgreSQL
    database. `options` go to the backend (e.g. ``connect_timeout_s``, ``busy_timeout_s``,
    SQLite's ``move_aside_damaged``).
    """
    if store == "sqlite":
        return SqliteStore(Path(state_dir) / SQLITE_FILE, **options)
    try:
        check_store(store)
    except ValueError as exc:
        raise StoreError(f"alarm store {exc}") from None
    return PgStore(store, **options)
