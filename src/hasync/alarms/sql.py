"""What the SQLite and PostgreSQL alarm stores share: the statements that differ only in their driver's
placeholder and in how times and JSON are stored, and the mapping of rows to `Alarm` and `OutboxItem`.

Each backend supplies its placeholder (`PARAM`), the conversions (`_ts`, `_dt`, `_json`, `_json_payload`,
`_doc`), how one statement runs (`_query`, `_change`) and how `due` claims items (`_claim`); it keeps
its own connection handling, migrations, `raise_alarm` and `clear`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Protocol, cast

from hasync.alarms.model import EVENTS, Alarm, Event, Identity, OutboxItem, utc
from hasync.alarms.store import ALARM_COLS, DEFAULT_LEASE_S, OUTBOX_COLS, StoreError
from hasync.errors import Cause, cause_of


class Row(Protocol):
    """A result row read by column name: `sqlite3.Row` or psycopg's `DictRow`."""

    def __getitem__(self, key: str, /) -> Any: ...


class SqlStore(ABC):
    """The `AlarmStore` methods both SQL backends run alike."""

    PARAM: ClassVar[str]  # the driver's placeholder: "?" for sqlite3, "%s" for psycopg
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

    def _alarm_insert(
        self, identity: Identity, cause: Cause, additional_info: str, now: object
    ) -> tuple[str, tuple[object, ...]]:
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
    ) -> tuple[str, tuple[object, ...]]:
        """The statement and arguments that queue one notification: for `enqueue`, and for the backends'
        raise and clear, which run it in their own transaction."""
        if event not in EVENTS:
            raise ValueError(f"unknown outbox event {event!r}")
        p = self.PARAM
        sql = (
            "INSERT INTO outbox (alarm_row, event, notifier, payload, created_at, next_try_at)"
            f" VALUES ({p}, {p}, {p}, {p}, {p}, {p})"
        )
        return sql, (alarm_row, event, notifier, self._json_payload(payload), now, now)

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
