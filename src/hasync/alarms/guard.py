"""The alarm store as a side part: a damaged or unreachable store never stops the agent.

`GuardedStore` is the `AlarmStore` the agent uses. It opens the real store (SQLite or
PostgreSQL) and passes every call through while the store works. When the store cannot
be opened at start, or a call fails with `StoreUnavailable` (cannot connect, locked past
its busy timeout, damaged), it reports the fault (`health`, an ERROR line in the HA
log, `hasync_alarm_store_up` 0 through `on_change`) and goes on without it:

- A raise or a clear is kept in memory as an *episode* of its alarm (raised at,
  cause, additional_info, cleared at, the notifiers to tell, the diagnosis made
  meanwhile), so the keeper, the lists and the status see the alarm state the
  verdicts say, with the times of the verdicts. Repeated raises of an active alarm
  update its open episode; at most `max_kept` episodes are kept (the oldest closed
  one goes first, counted in `health().dropped`).
- `run` retries opening and writing with a backoff (`retry_initial_s` doubling up to
  `retry_max_s`). When the store is back, the kept episodes are applied in order, each
  with the time of its verdict: an alarm raised and cleared while the store was down
  is recorded as raised and cleared (and notified), and the last verdict per alarm
  decides its state. Then the store is reported healthy again (one INFO line).
- The outbox stays in the store: while it is down there is nothing to deliver (`due`
  is empty); what was queued is delivered when it is back.

Kept episodes live in memory only: an agent stopped while its store is down loses
them (it logs how many); its next checks raise the alarm again if the fault remains.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import Enum
from typing import Any, TypeVar

from hasync import clock
from hasync.alarms.model import Alarm, Event, Identity, OutboxItem
from hasync.alarms.store import DEFAULT_LEASE_S, AlarmStore, StoreError, StoreUnavailable
from hasync.errors import Cause
from hasync.halog import kv
from hasync.tasks import Backoff, periodic

log = logging.getLogger("hasync.alarms")

MAX_KEPT = 1000
NOT_OPENED = "not opened yet"
T = TypeVar("T")


class _Down(Enum):
    DOWN = "down"


DOWN = _Down.DOWN  # what `GuardedStore._via` answers while the store is down


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Episode:
    """One alarm's raise and/or clear that the store has not recorded yet."""

    fingerprint: str
    view: Alarm  # the alarm as the keeper and the lists see it meanwhile
    identity: Identity | None  # None: only the clear of an alarm the store already holds
    raised_at: datetime
    notify: tuple[str, ...] = ()
    cleared_at: datetime | None = None
    clear_notify: tuple[str, ...] = ()
    raised_done: bool = False  # the raise is stored, the clear not yet


@dataclass(frozen=True)
class StoreHealth:
    ok: bool
    error: str | None
    since: datetime  # of the current state
    location: str
    kept: int  # episodes waiting for the store
    dropped: int  # episodes dropped because more than MAX_KEPT were waiting
    moved_aside: str | None  # a damaged SQLite file moved aside by this agent

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "error": self.error,
            "since": clock.iso(self.since),
            "location": self.location,
            "kept": self.kept,
            "dropped": self.dropped,
            "moved_aside": self.moved_aside,
        }


class GuardedStore:
    """An `AlarmStore` that keeps working, from memory, while the real one is down (see the module docstring)."""

    def __init__(
        self,
        opener: Callable[[], AlarmStore],
        location: str,
        *,
        on_change: Callable[[bool], None] | None = None,
        max_kept: int = MAX_KEPT,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 30.0,
    ) -> None:
        self.location = location
        self._opener = opener
        self._on_change = on_change
        self.max_kept = max_kept
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self._inner: AlarmStore | None = None
        self._ok = False
        self._error: str | None = NOT_OPENED
        self._since = _now()
        self._episodes: list[_Episode] = []
        self._known: dict[str, Alarm] = {}  # active alarms as last read from the store, by fingerprint
        self._ids: dict[int, int] = {}  # kept alarm's temporary (negative) id -> its row id once stored
        self._diagnoses: dict[int, dict[str, Any]] = {}  # row id -> diagnosis made while the store was down
        self._next_id = -1
        self._dropped = 0
        self._moved: str | None = None
        self._mu = threading.Lock()  # the state above; never held while calling the store
        self._io = threading.Lock()  # one writer at a time: raise, clear, reopen and catch-up

    # -- health ----------------------------------------------------------------------------------------
    @property
    def ok(self) -> bool:
        return self._ok

    def health(self) -> StoreHealth:
        with self._mu:
            return StoreHealth(
                self._ok, self._error, self._since, self.location, len(self._episodes), self._dropped, self._moved
            )

    def _fault(self, exc: StoreError) -> None:
        with self._mu:
            was_ok, old, self._error = self._ok, self._error, exc.message
            self._ok = False
            if was_ok:
                self._since = _now()
        if was_ok or old == NOT_OPENED:
            log.error(
                "alarm store unavailable, alarms kept in memory until it is back %s",
                kv(store=self.location, error=exc.message),
            )
            if self._on_change is not None:
                self._on_change(False)
        elif old != exc.message:
            log.warning("alarm store still unavailable %s", kv(store=self.location, error=exc.message))

    def _recovered(self, applied: int) -> None:
        with self._mu:
            first = self._error == NOT_OPENED
            self._ok, self._error, self._since = True, None, _now()
        if not first:
            log.info("alarm store available again %s", kv(store=self.location, applied=applied))
        if self._on_change is not None:
            self._on_change(True)

    def _up(self) -> AlarmStore | None:
        inner = self._inner
        return inner if self._ok and inner is not None else None

    def _via(self, call: Callable[[AlarmStore], T]) -> T | _Down:
        """`call` on the store while it is up; DOWN when it is down, or fails now (the fault is reported)."""
        inner = self._up()
        if inner is None:
            return DOWN
        try:
            return call(inner)
        except StoreUnavailable as exc:
            self._fault(exc)
            return DOWN

    # -- opening, retrying, catching up ------------------------------------------------------------------
    def open(self) -> bool:
        """Open the store and apply what was kept; False (and the fault reported) when it cannot."""
        with self._io:
            if self._inner is None:
                try:
                    self._inner = self._opener()
                except StoreError as exc:
                    self._fault(exc)
                    return False
                moved = getattr(self._inner, "moved_aside", None)
                if moved is not None:
                    self._moved = str(moved)
            inner = self._inner
            try:
                applied = self._catch_up(inner)
                active = inner.active()
            except StoreUnavailable as exc:
                self._close_inner()
                self._fault(exc)
                return False
            with self._mu:
                self._known = {a.fingerprint: a for a in active}
            self._recovered(applied)
            return True

    def _catch_up(self, inner: AlarmStore) -> int:
        """Apply the kept episodes in order, forgetting each once stored; return how many."""
        applied = 0
        while True:
            with self._mu:
                if not self._episodes:
                    break
                ep = self._episodes[0]
            try:
                self._apply(inner, ep)
            except StoreUnavailable:
                raise
            except StoreError as exc:  # this episode cannot be applied (the store refuses it): the next can
                log.warning("kept alarm not stored %s", kv(fingerprint=ep.fingerprint, error=exc.message))
            with self._mu:
                self._episodes.pop(0)
            applied += 1
        with self._mu:
            diagnoses, self._diagnoses = self._diagnoses, {}
        for row, doc in diagnoses.items():
            self._set_diagnosis_quietly(inner, row, doc)
        return applied

    def _apply(self, inner: AlarmStore, ep: _Episode) -> None:
        if ep.identity is not None and not ep.raised_done:
            v = ep.view
            alarm, _ = inner.raise_alarm(ep.identity, v.cause, v.additional_info, ep.raised_at, notify=ep.notify)
            with self._mu:
                ep.raised_done = True
                if v.id < 0:
                    self._ids[v.id] = alarm.id
            if v.diagnosis is not None:
                self._set_diagnosis_quietly(inner, alarm.id, v.diagnosis)
        if ep.cleared_at is not None:
            inner.clear(ep.fingerprint, ep.cleared_at, notify=ep.clear_notify)

    @staticmethod
    def _set_diagnosis_quietly(inner: AlarmStore, row: int, doc: dict[str, Any]) -> None:
        try:
            inner.set_diagnosis(row, doc)
        except StoreUnavailable:
            raise
        except StoreError as exc:  # e.g. the alarm is gone: the diagnosis has nothing to go with
            log.warning("diagnosis not stored %s", kv(alarm_row=row, error=exc.message))

    def _close_inner(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            try:
                inner.close()
            except StoreError:
                pass

    async def run(self, stop: asyncio.Event, on_recover: Callable[[], None] | None = None) -> None:
        """Until `stop`: while the store is down, retry with backoff; call `on_recover` when it is back."""
        # The wait after a fault is `retry_initial_s`; each failed retry doubles it.
        backoff = Backoff(self.retry_initial_s, self.retry_max_s)

        async def retry() -> None:
            if self._ok:
                backoff.reset()
                return
            back = False
            try:  # a bug (logged by `periodic`) must not end the retries: the store would stay down for good
                back = await asyncio.to_thread(self.open)
            finally:
                if back:
                    backoff.reset()
                else:
                    backoff.next()
            if back and on_recover is not None:
                on_recover()

        never_opened = self._inner is None and self._error == NOT_OPENED
        await periodic(
            retry,
            lambda: 1.0 if self._ok else backoff.current_s,
            stop,
            log,
            "alarm store retry",
            first_now=never_opened,
        )

    def close(self) -> None:
        with self._mu:
            kept = len(self._episodes)
        if kept:
            log.warning(
                "alarm store still unavailable at stop, kept alarms lost %s", kv(store=self.location, kept=kept)
            )
        with self._io:
            self._close_inner()

    # -- what the keeper writes ---------------------------------------------------------------------------
    def raise_alarm(
        self, identity: Identity, cause: Cause, additional_info: str, at: datetime, *, notify: Sequence[str] = ()
    ) -> tuple[Alarm, bool]:
        with self._io:
            raised = self._via(lambda s: s.raise_alarm(identity, cause, additional_info, at, notify=notify))
            if raised is not DOWN:
                with self._mu:
                    self._known[raised[0].fingerprint] = raised[0]
                return raised
            with self._mu:
                return self._keep_raise(identity, cause, additional_info, at, tuple(notify))

    def clear(self, fingerprint: str, at: datetime, *, notify: Sequence[str] = ()) -> Alarm | None:
        with self._io:
            cleared = self._via(lambda s: s.clear(fingerprint, at, notify=notify))
            if cleared is not DOWN:
                with self._mu:
                    self._known.pop(fingerprint, None)
                return cleared
            with self._mu:
                return self._keep_clear(fingerprint, at, tuple(notify))

    def _open_episode(self, fingerprint: str) -> _Episode | None:
        for ep in reversed(self._episodes):
            if ep.fingerprint == fingerprint:
                return ep if ep.cleared_at is None else None
        return None

    def _keep(self, ep: _Episode) -> None:
        if len(self._episodes) >= self.max_kept:
            closed = next((e for e in self._episodes if e.cleared_at is not None), self._episodes[0])
            self._episodes.remove(closed)
            if self._dropped == 0:
                log.warning("alarm store down too long: dropping the oldest kept alarms %s", kv(kept=self.max_kept))
            self._dropped += 1
        self._episodes.append(ep)

    def _keep_raise(
        self, identity: Identity, cause: Cause, additional_info: str, at: datetime, notify: tuple[str, ...]
    ) -> tuple[Alarm, bool]:
        fp = identity.fingerprint
        ep = self._open_episode(fp)
        if ep is not None:
            ep.view = replace(ep.view, cause=cause, additional_info=additional_info)
            return ep.view, False
        known = self._latest(fp)
        if known is not None:  # active in the store: only its cause and paths change
            view = replace(known, cause=cause, additional_info=additional_info)
            self._keep(_Episode(fp, view, identity, at))
            return view, False
        view = Alarm(
            id=self._next_id,
            source=identity.source,
            service_name=identity.service_name,
            role_name=identity.role_name,
            host_name=identity.host_name,
            alarm_id=identity.alarm_id,
            cause=cause,
            additional_info=additional_info,
            raised_at=at,
        )
        self._next_id -= 1
        self._keep(_Episode(fp, view, identity, at, notify))
        return view, True

    def _keep_clear(self, fingerprint: str, at: datetime, notify: tuple[str, ...]) -> Alarm | None:
        ep = self._open_episode(fingerprint)
        if ep is None:
            known = self._latest(fingerprint)
            if known is None:
                return None
            ep = _Episode(fingerprint, known, None, known.raised_at)
            self._keep(ep)
        ep.cleared_at, ep.clear_notify = at, notify
        ep.view = replace(ep.view, cleared_at=max(at, ep.view.raised_at))
        return ep.view

    def _latest(self, fingerprint: str) -> Alarm | None:
        """The active alarm of `fingerprint` as far as this agent knows, before any open episode."""
        for ep in reversed(self._episodes):
            if ep.fingerprint == fingerprint:
                return None if ep.cleared_at is not None else ep.view
        return self._known.get(fingerprint)

    # -- what the lists read -------------------------------------------------------------------------------
    def _shadow_active(self, fingerprint: str | None) -> list[Alarm]:
        with self._mu:
            fps = (
                [fingerprint]
                if fingerprint is not None
                else list(dict.fromkeys([*self._known, *(e.fingerprint for e in self._episodes)]))
            )
            out = [a for a in (self._latest(fp) for fp in fps) if a is not None]
        return sorted(out, key=lambda a: a.raised_at)

    def active(self, fingerprint: str | None = None) -> list[Alarm]:
        rows = self._via(lambda s: s.active(fingerprint))
        if rows is DOWN:
            return self._shadow_active(fingerprint)
        with self._mu:
            if fingerprint is None:
                self._known = {a.fingerprint: a for a in rows}
            elif rows:
                self._known[fingerprint] = rows[0]
            else:
                self._known.pop(fingerprint, None)
        return rows

    def history(self, limit: int = 1000) -> list[Alarm]:
        stored = self._via(lambda s: s.history(limit))
        if stored is not DOWN:
            return stored
        with self._mu:
            kept = [e.view for e in self._episodes]
            seen = {(a.fingerprint, a.raised_at) for a in kept}
            known = [a for a in self._known.values() if (a.fingerprint, a.raised_at) not in seen]
        rows = {(a.fingerprint, a.raised_at): a for a in [*known, *kept]}  # a later view of one alarm wins
        return sorted(rows.values(), key=lambda a: a.raised_at, reverse=True)[:limit]

    def get(self, fingerprint_or_id: str | int) -> Alarm | None:
        got = self._via(lambda s: s.get(fingerprint_or_id))
        if got is not DOWN:
            return got
        for a in self.history():
            if fingerprint_or_id in (a.id, a.fingerprint):
                return a
        return None

    def set_diagnosis(self, alarm_id: int, diagnosis: dict[str, Any]) -> None:
        with self._mu:
            if alarm_id < 0:
                for ep in self._episodes:
                    if ep.view.id == alarm_id:
                        ep.view = replace(ep.view, diagnosis=diagnosis)
                        return
                if alarm_id not in self._ids:
                    raise StoreError(f"alarm store {self.location}: no alarm with id {alarm_id}")
                alarm_id = self._ids[alarm_id]
        if self._via(lambda s: s.set_diagnosis(alarm_id, diagnosis)) is not DOWN:
            return
        with self._mu:
            if alarm_id not in self._diagnoses and len(self._diagnoses) >= self.max_kept:
                return
            self._diagnoses[alarm_id] = diagnosis

    # -- the outbox: nothing to deliver while the store is down ------------------------------------------------
    def _need(self) -> AlarmStore:
        inner = self._up()
        if inner is None:
            raise StoreUnavailable(f"alarm store {self.location}: unavailable: {self._error}")
        return inner

    def enqueue(self, alarm_id: int, event: Event, notifier: str, payload: dict[str, Any]) -> None:
        self._need().enqueue(alarm_id, event, notifier, payload)

    def due(
        self,
        now: datetime,
        limit: int = 100,
        *,
        notifiers: Collection[str] | None = None,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> list[OutboxItem]:
        items = self._via(lambda s: s.due(now, limit, notifiers=notifiers, lease_s=lease_s))
        return [] if items is DOWN else items

    def mark_sent(self, item_id: int, at: datetime | None = None) -> None:
        self._need().mark_sent(item_id, at)

    def mark_failed(self, item_id: int, next_try_at: datetime, error: str) -> None:
        self._need().mark_failed(item_id, next_try_at, error)

    def pending(self) -> list[OutboxItem]:
        return self._need().pending()

    def resend_candidates(self, notifier: str, cleared_since: datetime) -> list[Alarm]:
        alarms = self._via(lambda s: s.resend_candidates(notifier, cleared_since))
        return [] if alarms is DOWN else alarms

    def prune(self, before: datetime) -> int:
        inner = self._up()
        return 0 if inner is None else inner.prune(before)

    def schema_version(self) -> int:
        return self._need().schema_version()
