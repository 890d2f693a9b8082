"""The alarm store interface, its errors and `open_store`: SQLite by default, PostgreSQL by URL.

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

import re
from collections.abc import Collection, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from hasync.alarms.model import Alarm, Event, Identity, OutboxItem
from hasync.errors import Cause
from hasync.errors import StoreError as StoreError  # re-exported: the stores raise it
from hasync.errors import StoreUnavailable as StoreUnavailable

DEFAULT_LEASE_S = 60.0
SQLITE_FILE = "alarms.db"
PG_SCHEMES = ("postgresql", "postgres")

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


def mask_url(url: str) -> str:
    """`url` with any password (user info or ``password=`` query parameter) replaced by ``***``.

    Then masked by pattern like any text in a bundle (`collect.Masker`): a ``user:password@`` is masked
    also where the scheme is mistyped (``postgresql:/u:pw@h``, ``webhook:http://u:pw@h``) or the URL
    cannot be split. Every message that quotes a configured URL shows it through this function."""
    from hasync.collect import Masker

    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, sep, _pw = userinfo.partition(":")
            netloc = f"{user}:***@{hostport}" if sep else netloc
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(k.lower() == "password" for k, _ in pairs):
                query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*")
        url = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        pass
    return Masker().text(url)


def url_secrets(url: str) -> list[str]:
    """The password of `url` as written and decoded, to scrub from driver messages (also when `url`
    cannot be split or its scheme is mistyped: then found by the pattern `collect.Masker` masks URLs with)."""
    from hasync.collect import URL_PASSWORD_RE

    out: list[str] = [m.group(2) for m in URL_PASSWORD_RE.finditer(url)]
    try:
        parts = urlsplit(url)
        query = parts.query
        userinfo = parts.netloc.rpartition("@")[0]
        if ":" in userinfo:
            out.append(userinfo.partition(":")[2])
    except ValueError:
        query = url.partition("?")[2].partition("#")[0]
    out.extend(v for k, v in parse_qsl(query, keep_blank_values=True) if k.lower() == "password")
    for s in list(out):
        out.extend({unquote(s), quote(s, safe="")})
    return sorted({s for s in out if s}, key=len, reverse=True)


def url_port(url: str) -> int | None:
    """The port `url` names (None: none given); ValueError unless it is 1-65535 (`urlsplit` lets 0 through)."""
    port = urlsplit(url).port
    if port == 0:
        raise ValueError("port 0 is out of range 1-65535")
    return port


def one_line(message: object, secrets: Sequence[str] = ()) -> str:
    """A driver's message as one line, without any of `secrets`."""
    text = str(message)
    for s in secrets:
        text = text.replace(s, "***")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return re.sub(r"\s+", " ", lines[0]) if lines else type(message).__name__


def is_postgres_url(store: str) -> bool:
    return store.split(":", 1)[0].lower() in PG_SCHEMES and "://" in store


def check_store(store: str) -> None:
    """ValueError (password masked) unless `store` is ``"sqlite"`` or a postgresql:// URL that can be split."""
    if store == "sqlite":
        return
    if not is_postgres_url(store):
        raise ValueError(f'{mask_url(store)!r}: unknown store, expected "sqlite" or a postgresql:// URL')
    if any(ch.isspace() or ord(ch) < 32 for ch in store):
        raise ValueError(f"{mask_url(store)!r}: a URL must not contain spaces or control characters")
    try:
        url_port(store)
    except ValueError as exc:
        raise ValueError(f"{mask_url(store)!r}: not a valid URL ({exc})") from None


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
        from hasync.alarms.sqlite_store import SqliteStore

        return SqliteStore(Path(state_dir) / SQLITE_FILE, **options)
    try:
        check_store(store)
    except ValueError as exc:
        raise StoreError(f"alarm store {exc}") from None
    from hasync.alarms.pg_store import PgStore

    return PgStore(store, **options)
