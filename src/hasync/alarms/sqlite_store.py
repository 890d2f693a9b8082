"""The SQLite alarm store: one file in the node's state dir, WAL mode, the default backend."""

from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from hasync.alarms.model import Alarm, Identity, OutboxItem, utc
from hasync.alarms.sql import SCHEMA_VERSION_TABLE, SqlStore
from hasync.alarms.store import ALARM_COLS, OUTBOX_COLS, StoreUnavailable
from hasync.errors import Cause
from hasync.masking import one_line

T = TypeVar("T")

# Times are stored as fixed-width UTC text, so text order is time order.
_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%f+00:00"


log = logging.getLogger("hasync.alarms")

# What a damaged file makes SQLite answer (a garbage file: "file is not a database").
_DAMAGE_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


def _is_damage(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in _DAMAGE_CODES or "malformed" in str(exc)


class _Damaged(Exception):
    def __init__(self, error: sqlite3.Error) -> None:
        super().__init__(str(error))
        self.error = error


class SqliteStore(SqlStore):
    """Alarms in ``<state_dir>/alarms.db``. Writers take the lock up front (BEGIN IMMEDIATE) and wait for
    each other up to `busy_timeout_s`, so a CLI command and the agent can share the file.

    With `move_aside_damaged` (the agent), a file SQLite finds damaged at open (not a database, or failing
    ``PRAGMA quick_check``) is renamed to ``alarms.db.corrupt-<UTC time>`` with an ERROR line, and a new
    store is started; without it (CLI commands) opening fails with StoreUnavailable."""

    PARAM = "?"
    TYPES = {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "ref": "INTEGER", "ts": "TEXT", "json": "TEXT"}

    def __init__(self, path: Path, *, busy_timeout_s: float = 10.0, move_aside_damaged: bool = False) -> None:
        self.path = Path(path)
        self.location = f"sqlite:{self.path}"
        self._label = str(self.path)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self.moved_aside: Path | None = None  # where a damaged file went, when it was moved aside
        try:
            self._open(busy_timeout_s, damaged_is_fatal=not move_aside_damaged)
        except _Damaged as exc:
            self._move_aside(exc.error)
            self._open(busy_timeout_s, damaged_is_fatal=True)

    def _open(self, busy_timeout_s: float, *, damaged_is_fatal: bool) -> None:
        """Connect, check the file (unless a damaged one is fatal anyway: the CLI) and migrate.
        A damaged file raises `_Damaged` when it is not fatal, to be moved aside."""
        with self._mapped("cannot open"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            self._conn = conn
            try:
                self._set_up(conn, busy_timeout_s, check=not damaged_is_fatal)
            except BaseException as exc:
                conn.close()
                self._conn = None
                if not damaged_is_fatal and isinstance(exc, sqlite3.Error) and _is_damage(exc):
                    raise _Damaged(exc) from exc
                raise

    def _set_up(self, conn: sqlite3.Connection, busy_timeout_s: float, *, check: bool) -> None:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        if check:
            # A file that opens may still be damaged inside: find out now, not at the first alarm.
            verdict = str(conn.execute("PRAGMA quick_check(1)").fetchone()[0])
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: {verdict}")
        mode = self._wal(conn, busy_timeout_s)
        if mode != "wal":
            raise sqlite3.OperationalError(f"cannot switch to WAL journal mode (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        self._migrate()

    def _move_aside(self, error: sqlite3.Error) -> None:
        """Keep a damaged database file for whoever wants to look into it, out of the way of a new one."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        with self._mapped(f"damaged ({one_line(error)}) and cannot be moved aside"):
            for suffix in ("-wal", "-shm", ""):  # the main file last: a crash in between leaves it in place
                old = self.path.with_name(self.path.name + suffix)
                if old.exists():
                    os.replace(old, aside.with_name(aside.name + suffix))
        self.moved_aside = aside
        log.error(
            "alarm store damaged, moved aside and started anew store=%s moved_to=%s error=%s",
            self.path,
            aside,
            one_line(error),
        )

    # -- what the shared SQL needs ------------------------------------------

    @staticmethod
    def _ts(dt: datetime) -> str:
        return utc(dt).strftime(_TS_FORMAT)

    @staticmethod
    def _dt(value: str) -> datetime:
        return datetime.fromisoformat(value).astimezone(UTC)

    @staticmethod
    def _json(doc: dict[str, Any]) -> str:
        return json.dumps(doc, sort_keys=True, default=str)

    @staticmethod
    def _json_payload(doc: dict[str, Any]) -> str:
        return json.dumps(doc, sort_keys=True)  # unlike a diagnosis: no str() of what JSON cannot hold

    @staticmethod
    def _doc(value: str) -> Any:
        return json.loads(value)

    def _query(self, what: str, sql: str, args: Sequence[object] = ()) -> list[sqlite3.Row]:
        return self._run(what, lambda c: c.execute(sql, args).fetchall(), write=False)

    def _change(self, what: str, sql: str, args: Sequence[object]) -> int:
        return self._run(what, lambda c: c.execute(sql, args).rowcount)

    # -- plumbing -----------------------------------------------------------

    @staticmethod
    def _wal(conn: sqlite3.Connection, busy_timeout_s: float) -> str:
        """Switch to WAL. SQLite answers "locked" at once, without its busy handler, when another
        connection opens the same new file at that moment: retry like the busy handler would."""
        deadline = time.monotonic() + busy_timeout_s
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01 + random.random() * 0.04)

    @contextmanager
    def _mapped(self, what: str) -> Iterator[None]:
        """The one map of this backend's errors to the store's (as httpx's `map_exceptions`): sqlite3 and
        OS errors become StoreUnavailable "alarm store <path>: <what>: <error>"; our own pass as they are."""
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"alarm store {self.path}: {what}: {one_line(exc)}") from exc

    def _open_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable(f"alarm store {self.path}: store is closed")
        return self._conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding the database's write lock from its start."""
        conn = self._open_conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _run(self, what: str, fn: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        with self._lock, self._mapped(what):
            if not write:
                return fn(self._open_conn())
            with self._tx() as conn:
                return fn(conn)

    def _migrate(self) -> None:
        self._open_conn().execute(SCHEMA_VERSION_TABLE.format_map(self.TYPES))
        with self._tx() as conn:
            have = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
            for sql, args in self._migrations(have):
                conn.execute(sql, args)

    @staticmethod
    def _active_row(conn: sqlite3.Connection, fingerprint: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = conn.execute(
            f"SELECT {ALARM_COLS} FROM alarms WHERE fingerprint = ? AND cleared_at IS NULL", (fingerprint,)
        ).fetchone()
        return row

    # -- alarms -------------------------------------------------------------

    def raise_alarm(
        self, identity: Identity, cause: Cause, additional_info: str, at: datetime, *, notify: Sequence[str] = ()
    ) -> tuple[Alarm, bool]:
        when = self._ts(at)
        fp = identity.fingerprint

        def fn(conn: sqlite3.Connection) -> tuple[Alarm, bool]:
            row = self._active_row(conn, fp)
            if row is not None:
                if (row["cause"], row["additional_info"]) != (cause, additional_info):
                    conn.execute(
                        "UPDATE alarms SET cause = ?, additional_info = ?, updated_at = ? WHERE id = ?",
                        (cause, additional_info, when, row["id"]),
                    )
                    row = self._active_row(conn, fp)
                    assert row is not None
                return self._alarm(row), False
            cur = conn.execute(*self._alarm_insert(identity, cause, additional_info, when))
            row = conn.execute(f"SELECT {ALARM_COLS} FROM alarms WHERE id = ?", (cur.lastrowid,)).fetchone()
            alarm = self._alarm(row)
            for sql, args in self._notify(alarm, "raise", notify, when):
                conn.execute(sql, args)
            return alarm, True

        return self._run("cannot raise alarm", fn)

    def clear(self, fingerprint: str, at: datetime, *, notify: Sequence[str] = ()) -> Alarm | None:
        when = self._ts(at)

        def fn(conn: sqlite3.Connection) -> Alarm | None:
            row = self._active_row(conn, fingerprint)
            if row is None:
                return None
            conn.execute(
                "UPDATE alarms SET cleared_at = MAX(?, raised_at), updated_at = ? WHERE id = ?",
                (when, when, row["id"]),
            )
            alarm = self._alarm(conn.execute(f"SELECT {ALARM_COLS} FROM alarms WHERE id = ?", (row["id"],)).fetchone())
            for sql, args in self._notify(alarm, "clear", notify, when):
                conn.execute(sql, args)
            return alarm

        return self._run("cannot clear alarm", fn)

    # -- outbox -------------------------------------------------------------

    def _claim(self, now: object, lease_until: object, keys: list[str] | None, limit: int) -> list[OutboxItem]:
        """Select the due items, then lease them by moving their next try to `lease_until`, all under the
        write lock BEGIN IMMEDIATE takes."""
        sql = (
            f"SELECT {OUTBOX_COLS} FROM outbox o WHERE sent_at IS NULL AND next_try_at <= ?"
            " AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.alarm_row = o.alarm_row AND p.notifier = o.notifier"
            " AND p.sent_at IS NULL AND p.id < o.id)"
        )
        args: list[Any] = [now]
        if keys is not None:
            sql += f" AND notifier IN ({', '.join('?' * len(keys))})"
            args += keys
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)

        def fn(c: sqlite3.Connection) -> list[OutboxItem]:
            ids = [r["id"] for r in c.execute(sql, args)]
            if not ids:
                return []
            marks = ", ".join("?" * len(ids))
            c.execute(
                f"UPDATE outbox SET attempts = attempts + 1, next_try_at = ? WHERE id IN ({marks})", [lease_until, *ids]
            )
            rows = c.execute(f"SELECT {OUTBOX_COLS} FROM outbox WHERE id IN ({marks}) ORDER BY id", ids)
            return [self._item(r) for r in rows]

        return self._run("cannot read outbox", fn)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"
