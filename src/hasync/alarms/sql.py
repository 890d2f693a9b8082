"""What the SQLite and PostgreSQL alarm stores share: the schema and the statements that differ only in their
driver's placeholder and in how times and JSON are stored, and the mapping of rows to `Alarm` and `OutboxItem`.

Each backend supplies its placeholder (`PARAM`), its column types (`TYPES`), the conversions (`_ts`, `_dt`,
`_json`, `_json_payload`, `_doc`), how one statement runs (`_query`, `_change`) and how `due` claims items
(`_claim`); it keeps its own connection handling, the transaction its migrations run in, `raise_alarm` and
`clear` (whose statements, `_alarm_insert` and `_notify`, come from here).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Protocol, cast

from hasync.alarms.model import EVENTS, Alarm, Event, Identity, OutboxItem, utc
from hasync.alarms.store import ALARM_COLS, DEFAULT_LEASE_S, MIGRATIONS, OUTBOX_COLS, SCHEMA_VERSION, StoreError
from hasync.errors import Cause, cause_of

# The statements of each migration (`store.MIGRATIONS`). Column types that differ between the backends are
# left open, filled from the backend's `TYPES`: {id} a row id, {ref} a reference to one, {ts} a time, {json}
# a JSON document.
SCHEMA: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE alarms (
            id {id},
            fingerprint TEXT NOT NULL,
            alarm_id INTEGER NOT NULL,
            source TEXT NOT NULL,
            service_name TEXT NOT NULL,
            role_name TEXT NOT NULL,
            host_name TEXT NOT NULL,
            cause TEXT NOT NULL,
            additional_info TEXT NOT NULL,
            raised_at {ts} NOT NULL,
            cleared_at {ts},
            updated_at {ts} NOT NULL,
            diagnosis {json},
            CHECK (cleared_at IS NULL OR cleared_at >= raised_at)
        )""",
        "CREATE UNIQUE INDEX alarms_one_active ON alarms (fingerprint) WHERE cleared_at IS NULL",
        "CREATE INDEX alarms_fingerprint ON alarms (fingerprint, raised_at)",
        "CREATE INDEX alarms_raised_at ON alarms (raised_at, id)",
    ),
    2: (
        """CREATE TABLE outbox (
            id {id},
            alarm_row {ref} NOT NULL REFERENCES alarms (id) ON DELETE CASCADE,
            event TEXT NOT NULL CHECK (event IN ('raise', 'clear')),
            notifier TEXT NOT NULL,
            payload {json} NOT NULL,
            created_at {ts} NOT NULL,
            next_try_at {ts} NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            sent_at {ts}
        )""",
        "CREATE INDEX outbox_pending ON outbox (next_try_at, id) WHERE sent_at IS NULL",
        "CREATE INDEX outbox_alarm ON outbox (alarm_row, notifier, id)",
    ),
}
assert sorted(SCHEMA) == [v for v, _ in MIGRATIONS]
# Created (if missing) before the migrations run, outside them.
SCHEMA_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    "version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at {ts} NOT NULL)"
)

Statement = tuple[str, tuple[object, ...]]


class Row(Protocol):
    """A result row read by column name: `sqlite3.Row` or psycopg's `DictRow`."""

    def __getitem__(self, key: str, /) -> Any: ...


class SqlStore(ABC):
    """The `AlarmStore` methods both SQL backends run alike."""

    PARAM: ClassVar[str]  # the driver's placeholder: "?" for sqlite3, "%s" for psycopg
    TYPES: ClassVar[dict[str, str]]  # the column types SCHEMA leaves open
    _label: str  # how error messages name the store

    # -- what each backend supplies -------------------------------------------

    @staticmethod
    @abstractmethod
    def _ts(dt: datetime) -> object:
        """`dt` as the database stores it."""

    @staticmethod
    @abstractmethod
    def _dt(value: Any) -> datetime:
        """A stored time as an aware UTC datetime."""

    @staticmethod
    @abstractmethod
    def _json(doc: dict[str, Any]) -> object:
        """A diagnosis as the database stores it."""

    @staticmethod
    @abstractmethod
    def _json_payload(doc: dict[str, Any]) -> object:
        """An outbox payload as the database stores it."""

    @staticmethod
    @abstractmethod
    def _doc(value: Any) -> Any:
        """A stored (non-null) JSON value as Python objects."""

    @abstractmethod
    def _query(self, what: str, sql: str, args: Sequence[object] = ()) -> Sequence[Row]:
        """The rows of one read; StoreError "<what>: <driver message>" when it fails."""

    @abstractmethod
    def _change(self, what: str, sql: str, args: Sequence[object]) -> int:
        """Run one write in its own transaction and return its row count; StoreError as `_query`."""

    @abstractmethod
    def _claim(self, now: object, lease_until: object, keys: list[str] | None, limit: int) -> list[OutboxItem]:
        """`due` after its checks: claim the items, with times already converted by `_ts`."""

    # -- rows -----------------------------------------------------------------

    def _alarm(self, row: Row) -> Alarm:
        return Alarm(
            id=row["id"],
            alarm_id=row["alarm_id"],
            source=row["source"],
            service_name=row["service_name"],
            role_name=row["role_name"],
            host_name=row["host_name"],
            cause=cause_of(row["cause"]),
            additional_info=row["additional_info"],
            raised_at=self._dt(row["raised_at"]),
            cleared_at=None if row["cleared_at"] is None else self._dt(row["cleared_at"]),
            diagnosis=None if row["diagnosis"] is None else self._doc(row["diagnosis"]),
        )

    def _item(self, row: Row) -> OutboxItem:
        return OutboxItem(
            id=row["id"],
            alarm_row=row["alarm_row"],
            event=cast(Event, row["event"]),
            notifier=row["notifier"],
            payload=self._doc(row["payload"]),
            created_at=self._dt(row["created_at"]),
            next_try_at=self._dt(row["next_try_at"]),
            attempts=row["attempts"],
            last_error=row["last_error"],
            sent_at=None if row["sent_at"] is None else self._dt(row["sent_at"]),
        )

    def _alarm_insert(self, identity: Identity, cause: Cause, additional_info: str, now: object) -> Statement:
        """The statement and arguments that insert a new active alarm, for the backends' raise."""
        p = self.PARAM
        sql = (
            "INSERT INTO alarms (fingerprint, alarm_id, source, service_name, role_name, host_name,"
            f" cause, additional_info, raised_at, updated_at) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})"
        )
        args = (
            identity.fingerprint,
            identity.alarm_id,
            identity.source,
            identity.service_name,
            identity.role_name,
            identity.host_name,
            cause,
            additional_info,
            now,
            now,
        )
        return sql, args

    def _outbox_insert(
        self, alarm_row: int, event: Event, notifier: str, payload: dict[str, Any], now: object
    ) -> Statement:
        """The statement and arguments that queue one notification (`enqueue`, `_notify`)."""
        if event not in EVENTS:
            raise ValueError(f"unknown outbox event {event!r}")
        p = self.PARAM
        sql = (
            "INSERT INTO outbox (alarm_row, event, notifier, payload, created_at, next_try_at)"
            f" VALUES ({p}, {p}, {p}, {p}, {p}, {p})"
        )
        return sql, (alarm_row, event, notifier, self._json_payload(payload), now, now)

    def _notify(self, alarm: Alarm, event: Event, notify: Sequence[str], now: object) -> list[Statement]:
        """The outbox items of a raise or a clear, one per notifier key, for the backend to run in the same
        transaction as the change."""
        return [self._outbox_insert(alarm.id, event, key, alarm.to_json(), now) for key in dict.fromkeys(notify)]

    def _migrations(self, have: int) -> list[Statement]:
        """What brings a schema at version `have` up to date, in order, for the backend to run in one
        transaction (after creating SCHEMA_VERSION_TABLE). StoreError when `have` is newer than this hasync."""
        if have > SCHEMA_VERSION:
            raise StoreError(
                f"alarm store {self._label}: schema version {have} is newer than this hasync knows"
                f" ({SCHEMA_VERSION}); upgrade hasync"
            )
        p = self.PARAM
        out: list[Statement] = []
        for version, description in MIGRATIONS:
            if version > have:
                out += [(statement.format_map(self.TYPES), ()) for statement in SCHEMA[version]]
                out.append(
                    (
                        f"INSERT INTO schema_version (version, description, applied_at) VALUES ({p}, {p}, {p})",
                        (version, description, self._ts(datetime.now(UTC))),
                    )
                )
        return out

    # -- alarms ---------------------------------------------------------------

    def active(self, fingerprint: str | None = None) -> list[Alarm]:
        sql = f"SELECT {ALARM_COLS} FROM alarms WHERE cleared_at IS NULL"
        args: tuple[Any, ...] = ()
        if fingerprint is not None:
            sql += f" AND fingerprint = {self.PARAM}"
            args = (fingerprint,)
        sql += " ORDER BY raised_at, id"
        return [self._alarm(r) for r in self._query("cannot read alarms", sql, args)]

    def history(self, limit: int = 1000) -> list[Alarm]:
        sql = f"SELECT {ALARM_COLS} FROM alarms ORDER BY raised_at DESC, id DESC LIMIT {self.PARAM}"
        return [self._alarm(r) for r in self._query("cannot read alarms", sql, (limit,))]

    def get(self, fingerprint_or_id: str | int) -> Alarm | None:
        if isinstance(fingerprint_or_id, int):
            sql = f"SELECT {ALARM_COLS} FROM alarms WHERE id = {self.PARAM}"
        else:
            sql = (
                f"SELECT {ALARM_COLS} FROM alarms WHERE fingerprint = {self.PARAM}"
                " ORDER BY cleared_at IS NULL DESC, raised_at DESC, id DESC LIMIT 1"
            )
        rows = self._query("cannot read alarms", sql, (fingerprint_or_id,))
        return self._alarm(rows[0]) if rows else None

    def set_diagnosis(self, alarm_id: int, diagnosis: dict[str, Any]) -> None:
        p = self.PARAM
        sql = f"UPDATE alarms SET diagnosis = {p} WHERE id = {p}"
        if self._change("cannot store diagnosis", sql, (self._json(diagnosis), alarm_id)) != 1:
            raise StoreError(f"alarm store {self._label}: no alarm with id {alarm_id}")

    # -- outbox ---------------------------------------------------------------

    def enqueue(self, alarm_id: int, event: Event, notifier: str, payload: dict[str, Any]) -> None:
        now = self._ts(datetime.now(UTC))
        sql, args = self._outbox_insert(alarm_id, event, notifier, payload, now)
        self._change("cannot queue notification", sql, args)

    def due(
        self,
        now: datetime,
        limit: int = 100,
        *,
        notifiers: Collection[str] | None = None,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> list[OutboxItem]:
        keys = None if notifiers is None else sorted(set(notifiers))
        if keys == []:
            return []
        lease_until = self._ts(utc(now) + timedelta(seconds=lease_s))
        return self._claim(self._ts(now), lease_until, keys, limit)

    def mark_sent(self, item_id: int, at: datetime | None = None) -> None:
        p = self.PARAM
        sql = f"UPDATE outbox SET sent_at = {p}, last_error = NULL WHERE id = {p}"
        self._change("cannot update outbox", sql, (self._ts(at or datetime.now(UTC)), item_id))

    def mark_failed(self, item_id: int, next_try_at: datetime, error: str) -> None:
        p = self.PARAM
        sql = f"UPDATE outbox SET next_try_at = {p}, last_error = {p} WHERE id = {p} AND sent_at IS NULL"
        self._change("cannot update outbox", sql, (self._ts(next_try_at), error[:1000], item_id))

    def pending(self) -> list[OutboxItem]:
        sql = f"SELECT {OUTBOX_COLS} FROM outbox WHERE sent_at IS NULL ORDER BY id"
        return [self._item(r) for r in self._query("cannot read outbox", sql)]

    def resend_candidates(self, notifier: str, cleared_since: datetime) -> list[Alarm]:
        p = self.PARAM
        sql = (
            f"SELECT {ALARM_COLS} FROM alarms a WHERE (a.cleared_at IS NULL OR a.cleared_at >= {p})"
            f" AND EXISTS (SELECT 1 FROM outbox o WHERE o.alarm_row = a.id AND o.notifier = {p}"
            " AND o.event = 'raise' AND o.sent_at IS NOT NULL)"
            f" AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.alarm_row = a.id AND o.notifier = {p}"
            " AND o.sent_at IS NULL)"
            " ORDER BY a.id"
        )
        args = (self._ts(cleared_since), notifier, notifier)
        return [self._alarm(r) for r in self._query("cannot read alarms", sql, args)]

    def prune(self, before: datetime) -> int:
        p = self.PARAM
        cut = self._ts(before)
        sql = (
            f"DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < {p} AND alarm_row IN"
            f" (SELECT id FROM alarms WHERE cleared_at IS NOT NULL AND cleared_at < {p})"
        )
        return self._change("cannot prune outbox", sql, (cut, cut))

    def schema_version(self) -> int:
        rows = self._query("cannot read schema version", "SELECT COALESCE(MAX(version), 0) AS v FROM schema_version")
        return int(rows[0]["v"]) if rows else 0
