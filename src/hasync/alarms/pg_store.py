"""The PostgreSQL alarm store (psycopg 3): one database shared by many agents and pairs."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb

from hasync.alarms.model import Alarm, Identity, OutboxItem, utc
from hasync.alarms.sql import SCHEMA_VERSION_TABLE, SqlStore
from hasync.alarms.store import ALARM_COLS, OUTBOX_COLS, StoreError, StoreUnavailable
from hasync.errors import Cause
from hasync.masking import mask_url, one_line, url_secrets

log = logging.getLogger("hasync.alarms")

T = TypeVar("T")
_dumps = partial(json.dumps, sort_keys=True, default=str)
Conn = psycopg.Connection[DictRow]

# Serializes migrations of agents opening the same database at once.
_MIGRATION_LOCK_KEY = 45641


class PgStore(SqlStore):
    """Alarms in a PostgreSQL database named by a ``postgresql://`` URL.

    One connection, used by one thread at a time. A connection that dropped
    (server restart, network cut, idle kill) is replaced and the operation
    retried once; every operation is one transaction, and the raise is
    idempotent, so a retry after a lost commit acknowledgement is harmless
    (an outbox item may then be sent twice: delivery is at least once).
    """

    PARAM = "%s"
    TYPES = {
        "id": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "ref": "BIGINT",
        "ts": "TIMESTAMPTZ",
        "json": "JSONB",
    }

    def __init__(self, url: str, *, connect_timeout_s: float = 5.0, statement_timeout_s: float = 30.0) -> None:
        self.location = mask_url(url)
        self._label = self.location
        self._url = url
        self._secrets = url_secrets(url)
        self._connect_timeout_s = connect_timeout_s
        self._statement_timeout_s = statement_timeout_s
        self._lock = threading.RLock()
        self._conn: Conn | None = None
        self._closed = False
        with self._lock:
            self._connect()
            try:
                self._migrate()
            except BaseException:
                self.close()
                raise

    # -- what the shared SQL needs ------------------------------------------

    @staticmethod
    def _ts(dt: datetime) -> datetime:
        return utc(dt)

    @staticmethod
    def _dt(value: datetime) -> datetime:
        return utc(value)

    @staticmethod
    def _json(doc: dict[str, Any]) -> Jsonb:
        return Jsonb(doc, dumps=_dumps)

    @staticmethod
    def _json_payload(doc: dict[str, Any]) -> Jsonb:
        return Jsonb(doc, dumps=_dumps)

    @staticmethod
    def _doc(value: Any) -> Any:
        return value  # psycopg has already decoded the JSONB

    def _query(self, what: str, sql: str, args: Sequence[object] = ()) -> list[DictRow]:
        return self._run(what, lambda c: c.execute(sql.encode(), args).fetchall())

    def _change(self, what: str, sql: str, args: Sequence[object]) -> int:
        return self._run(what, lambda c: c.execute(sql.encode(), args).rowcount)

    # -- plumbing -----------------------------------------------------------

    @contextmanager
    def _mapped(self, what: str) -> Iterator[None]:
        """The one map of psycopg's errors to the store's (as httpx's `map_exceptions`): StoreUnavailable
        "alarm store <masked URL>: <what>: <error, secrets masked>"; our own errors pass as they are.
        Not chained (``from None``): the driver's error may hold the password."""
        try:
            yield
        except psycopg.Error as exc:
            raise StoreUnavailable(f"alarm store {self.location}: {what}: {one_line(exc, self._secrets)}") from None

    def _connect(self) -> Conn:
        with self._mapped("bad URL"):
            params: dict[str, Any] = conninfo_to_dict(self._url)
        params.setdefault("connect_timeout", max(1, round(self._connect_timeout_s)))
        params.setdefault("application_name", "hasync")
        # Notice a silently dropped connection instead of waiting on it forever.
        params.setdefault("keepalives", 1)
        params.setdefault("keepalives_idle", 30)
        params.setdefault("keepalives_interval", 10)
        params.setdefault("keepalives_count", 3)
        with self._mapped("cannot connect"):
            conn: Conn = psycopg.connect(autocommit=True, row_factory=dict_row, **params)
        with self._mapped("cannot set up the session"):
            try:
                conn.execute("SET TIME ZONE 'UTC'")
                conn.execute(f"SET statement_timeout = {int(self._statement_timeout_s * 1000)}")
            except BaseException:
                conn.close()
                raise
        self._conn = conn
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            with suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def _run(self, what: str, fn: Callable[[Conn], T]) -> T:
        """Run `fn` in one transaction, reconnecting once when the connection turns out to be gone."""
        with self._lock:
            if self._closed:
                raise StoreUnavailable(f"alarm store {self.location}: store is closed")
            for attempt in (1, 2):
                conn = self._conn if self._conn is not None and not self._conn.closed else self._connect()
                with self._mapped(what):
                    try:
                        with conn.transaction():
                            return fn(conn)
                    except psycopg.OperationalError:
                        if not (conn.broken or conn.closed):
                            raise
                        self._drop()
                        if attempt == 2:
                            raise
                log.warning("alarm store connection lost, reconnecting store=%s", self.location)
            raise AssertionError("unreachable")

    def _migrate(self) -> None:
        def fn(conn: Conn) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
            conn.execute(SCHEMA_VERSION_TABLE.format_map(self.TYPES).encode())
            row = conn.execute("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version").fetchone()
            for sql, args in self._migrations(int(row["v"]) if row else 0):
                conn.execute(sql.encode(), args or None)

        self._run("cannot migrate the schema", fn)

    # -- alarms -------------------------------------------------------------

    def raise_alarm(
        self, identity: Identity, cause: Cause, additional_info: str, at: datetime, *, notify: Sequence[str] = ()
    ) -> tuple[Alarm, bool]:
        when = utc(at)
        fp = identity.fingerprint
        insert, insert_args = self._alarm_insert(identity, cause, additional_info, when)
        insert += f" ON CONFLICT (fingerprint) WHERE cleared_at IS NULL DO NOTHING RETURNING {ALARM_COLS}"

        def fn(conn: Conn) -> tuple[Alarm, bool]:
            # The unique partial index decides between racing raisers: the loser's insert does nothing
            # (after waiting for the winner's commit) and it reads the winner's row instead.
            for _ in range(5):
                row = conn.execute(insert.encode(), insert_args).fetchone()
                if row is not None:
                    alarm = self._alarm(row)
                    for sql, args in self._notify(alarm, "raise", notify, when):
                        conn.execute(sql.encode(), args)
                    return alarm, True
                row = conn.execute(
                    f"SELECT {ALARM_COLS} FROM alarms WHERE fingerprint = %s AND cleared_at IS NULL FOR UPDATE",
                    (fp,),
                ).fetchone()
                if row is None:
                    continue  # cleared between our insert and our select: try again
                if (row["cause"], row["additional_info"]) != (cause, additional_info):
                    row = conn.execute(
                        "UPDATE alarms SET cause = %s, additional_info = %s, updated_at = %s WHERE id = %s"
                        f" RETURNING {ALARM_COLS}",
                        (cause, additional_info, when, row["id"]),
                    ).fetchone()
                    assert row is not None
                return self._alarm(row), False
            raise StoreError(f"alarm store {self.location}: alarm {fp} keeps being raised and cleared concurrently")

        return self._run("cannot raise alarm", fn)

    def clear(self, fingerprint: str, at: datetime, *, notify: Sequence[str] = ()) -> Alarm | None:
        when = utc(at)

        def fn(conn: Conn) -> Alarm | None:
            # Concurrent clearers queue on the row lock; the later ones then see cleared_at set and get nothing.
            row = conn.execute(
                "UPDATE alarms SET cleared_at = GREATEST(%s, raised_at), updated_at = %s"
                f" WHERE fingerprint = %s AND cleared_at IS NULL RETURNING {ALARM_COLS}",
                (when, when, fingerprint),
            ).fetchone()
            if row is None:
                return None
            alarm = self._alarm(row)
            for sql, args in self._notify(alarm, "clear", notify, when):
                conn.execute(sql.encode(), args)
            return alarm

        return self._run("cannot clear alarm", fn)

    # -- outbox -------------------------------------------------------------

    def _claim(self, now: object, lease_until: object, keys: list[str] | None, limit: int) -> list[OutboxItem]:
        # SKIP LOCKED: a row another dispatcher is claiming right now is left to it.
        sql = (
            "WITH c AS (SELECT o.id FROM outbox o WHERE o.sent_at IS NULL AND o.next_try_at <= %(now)s"
            " AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.alarm_row = o.alarm_row AND p.notifier = o.notifier"
            " AND p.sent_at IS NULL AND p.id < o.id)"
            + ("" if keys is None else " AND o.notifier = ANY(%(keys)s)")
            + " ORDER BY o.id LIMIT %(limit)s FOR UPDATE OF o SKIP LOCKED)"
            " UPDATE outbox SET attempts = outbox.attempts + 1, next_try_at = %(lease)s FROM c WHERE outbox.id = c.id"
            f" RETURNING {', '.join('outbox.' + col.strip() for col in OUTBOX_COLS.split(','))}"
        )
        args = {"now": now, "keys": keys, "limit": limit, "lease": lease_until}

        def fn(c: Conn) -> list[OutboxItem]:
            return sorted((self._item(r) for r in c.execute(sql.encode(), args)), key=lambda i: i.id)

        return self._run("cannot read outbox", fn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()

    def __repr__(self) -> str:
        return f"PgStore({self.location!r})"
