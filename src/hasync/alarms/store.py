"""The alarm store interface and its errors; `alarms.backends.open_store` opens one (SQLite or PostgreSQL).

Every backend keeps the same promises, checked by one contract test suite:

- One active alarm per identity, enforced by the database (a unique partial
  index on ``fingerprint`` where ``cleared_at`` is null), so agents sharing a
  PostgreSQL store that race to raise the same alarm get one row.
- `raise_alarm` and `clear` take the keys of the notifiers to tell, and put
  their outbox items in the same transaction as the state change: a raise or a
  clear is never stored without its notifications, nor notified without being
  stored. Only the caller that created (or cleared) the alarm enqueues.
- The outbox is delivered at least once, in order per (alarm, notifier):
  `due` hands out only the oldest pending item of each pair and leases it, so
  two dispatchers on one store never send the same item at the same time.
- Schema migrations are an ordered list applied at open, recorded in
  ``schema_version``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from hasync.alarms.model import Alarm, Event, Identity, OutboxItem
from hasync.errors import Cause
from hasync.errors import StoreError as StoreError  # re-exported: the stores raise it
from hasync.errors import StoreUnavailable as StoreUnavailable

DEFAULT_LEASE_S = 60.0
SQLITE_FILE = "alarms.db"

# (version, description): the same numbering in both backends.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, "alarms with one active alarm per fingerprint"),
    (2, "notification outbox"),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]
# The columns both backends select, in the order their row mappers read them.
ALARM_COLS = (
    "id, alarm_id, source, service_name, role_name, host_name, cause, additional_info, raised_at, cleared_at, diagnosis"
)
OUTBOX_COLS = "id, alarm_row, event, notifier, payload, created_at, next_try_at, attempts, last_error, sent_at"


@runtime_checkable
class AlarmStore(Protocol):
    """Where alarms and their outbox live. Synchronous and thread-safe: the agent calls it via `asyncio.to_thread`.

    `alarm_id` parameters are the store's row id (`Alarm.id`), not 45641.
    """

    location: str  # where the store is, safe to show (password masked)

    def raise_alarm(
        self, identity: Identity, cause: Cause, additional_info: str, at: datetime, *, notify: Sequence[str] = ()
    ) -> tuple[Alarm, bool]:
        """Raise the alarm of `identity`, idempotently.

        When an active alarm with its fingerprint exists, return it (with cause and
        additional_info updated if they changed) and False. Otherwise insert it,
        enqueue a "raise" item for each key in `notify` in the same transaction,
        and return it and True.
        """
        ...

    def clear(self, fingerprint: str, at: datetime, *, notify: Sequence[str] = ()) -> Alarm | None:
        """Clear the active alarm of `fingerprint` at `at` (never before its raise time) and return it,
        with a "clear" item per key in `notify` in the same transaction; None when none is active.
        Of concurrent clearers exactly one gets the alarm."""
        ...

    def active(self, fingerprint: str | None = None) -> list[Alarm]:
        """Active alarms, oldest first; only that fingerprint's when given."""
        ...

    def history(self, limit: int = 1000) -> list[Alarm]:
        """All alarms, cleared ones included, newest first."""
        ...

    def get(self, fingerprint_or_id: str | int) -> Alarm | None:
        """An int is a row id; a str a fingerprint: its active alarm, else its latest one."""
        ...

    def set_diagnosis(self, alarm_id: int, diagnosis: dict[str, Any]) -> None:
        """Store a diagnosis (JSON) with alarm row `alarm_id`; StoreError when there is no such alarm."""
        ...

    def enqueue(self, alarm_id: int, event: Event, notifier: str, payload: dict[str, Any]) -> None:
        """Queue one notification outside a raise or clear (e.g. a re-notify)."""
        ...

    def due(
        self,
        now: datetime,
        limit: int = 100,
        *,
        notifiers: Collection[str] | None = None,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> list[OutboxItem]:
        """Claim pending items whose time has come, oldest first, at most one per (alarm, notifier) — the
        oldest pending one, so each pair is delivered in order. Claiming counts an attempt and leases the
        item for `lease_s`: no other caller gets it until then or until `mark_failed` reschedules it."""
        ...

    def mark_sent(self, item_id: int, at: datetime | None = None) -> None: ...

    def mark_failed(self, item_id: int, next_try_at: datetime, error: str) -> None: ...

    def pending(self) -> list[OutboxItem]:
        """Every unsent outbox item, oldest first (for status and tests)."""
        ...

    def resend_candidates(self, notifier: str, cleared_since: datetime) -> list[Alarm]:
        """Alarms whose "raise" was sent to `notifier`, with nothing pending for it, active or cleared
        since `cleared_since`: what an Alertmanager client re-sends."""
        ...

    def prune(self, before: datetime) -> int:
        """Delete sent outbox items of alarms cleared before `before`; return how many."""
        ...

    def schema_version(self) -> int: ...

    def close(self) -> None: ...
