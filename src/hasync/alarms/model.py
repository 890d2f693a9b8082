"""Alarm 45641 as values: its identity, a stored alarm and a queued notification (SPEC §6)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from hasync import clock
from hasync.errors import Cause

ALARM_ID = 45641
SEVERITY = "Major"
AUTO_CLEAR = True

Event = Literal["raise", "clear"]
EVENTS: tuple[Event, ...] = ("raise", "clear")


def alarm_name(role_name: str) -> str:
    """The alarm's name as the reference page spells it, for one role."""
    return f"Data Synchronization Exception Between the Active and Standby {role_name} Nodes"


def utc(dt: datetime) -> datetime:
    """`dt` in UTC; a naive datetime is refused because its zone is a guess."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt.isoformat()}: alarm times must carry a UTC offset")
    return dt.astimezone(UTC)


def iso(dt: datetime | None) -> str | None:
    """ISO 8601 in UTC with milliseconds (SPEC §3), or None; a naive datetime is refused (`utc`)."""
    return None if dt is None else clock.iso(utc(dt), "milliseconds", UTC)


def additional_info(cause: Cause, paths: Sequence[str] = (), *, limit: int = 5) -> str:
    """The alarm's additional_info (SPEC §6): the cause and the first out-of-sync paths.

    >>> additional_info("junk_file", ["conf/sedXyZ12"])
    'cause=junk_file; out of sync: conf/sedXyZ12'
    """
    text = f"cause={cause}"
    if paths:
        shown = ", ".join(paths[:limit])
        more = len(paths) - limit
        text += f"; out of sync: {shown}" + (f" (+{more} more)" if more > 0 else "")
    return text


@dataclass(frozen=True)
class Identity:
    """What makes two alarms the same alarm: 45641 plus its four parameters (SPEC §6)."""

    source: str
    service_name: str
    role_name: str
    host_name: str
    alarm_id: int = ALARM_ID

    @property
    def fingerprint(self) -> str:
        """Stable for this identity: first 16 hex digits of SHA-256 over the fields joined with NUL."""
        raw = "\0".join((str(self.alarm_id), self.source, self.service_name, self.role_name, self.host_name))
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:16]

    @property
    def name(self) -> str:
        return alarm_name(self.role_name)


@dataclass(frozen=True, kw_only=True)
class Alarm:
    """One stored alarm: raised at `raised_at`, active until `cleared_at` is set."""

    id: int
    source: str
    service_name: str
    role_name: str
    host_name: str
    cause: Cause
    additional_info: str
    raised_at: datetime
    cleared_at: datetime | None = None
    diagnosis: dict[str, Any] | None = field(default=None, compare=False)
    alarm_id: int = ALARM_ID

    @property
    def identity(self) -> Identity:
        return Identity(self.source, self.service_name, self.role_name, self.host_name, self.alarm_id)

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint

    @property
    def name(self) -> str:
        return alarm_name(self.role_name)

    @property
    def active(self) -> bool:
        return self.cleared_at is None

    def to_json(self, *, diagnosis: bool = False) -> dict[str, Any]:
        """The object `hasync alarms --json` prints (SPEC §3); `diagnosis=True` adds that extra key."""
        out: dict[str, Any] = {
            "alarm_id": self.alarm_id,
            "name": self.name,
            "severity": SEVERITY,
            "auto_clear": AUTO_CLEAR,
            "source": self.source,
            "service_name": self.service_name,
            "role_name": self.role_name,
            "host_name": self.host_name,
            "cause": str(self.cause),
            "additional_info": self.additional_info,
            "raised_at": iso(self.raised_at),
            "cleared_at": iso(self.cleared_at),
            "fingerprint": self.fingerprint,
        }
        if diagnosis:
            out["diagnosis"] = self.diagnosis
        return out


@dataclass(frozen=True, kw_only=True)
class OutboxItem:
    """A notification waiting in the store's outbox: one event of one alarm for one notifier.

    `payload` is the alarm's `to_json()` at the time of the event; `alarm_row` is `Alarm.id`.
    """

    id: int
    alarm_row: int
    event: Event
    notifier: str
    payload: dict[str, Any] = field(compare=False)
    created_at: datetime
    next_try_at: datetime
    attempts: int = 0
    last_error: str | None = None
    sent_at: datetime | None = None
