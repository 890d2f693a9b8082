"""The time window of a bundle, and the command line's durations, times and sizes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from hasync.clock import iso
from hasync.errors import UsageError

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?", re.IGNORECASE)


def parse_duration(text: str) -> timedelta:
    """``10m``, ``90s``, ``1h``, ``1h30m``, ``2.5m`` or plain seconds."""
    s = text.strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    while pos < len(s):
        m = _DURATION_RE.match(s, pos)
        if m is None or m.end() == pos:
            raise UsageError(f"bad duration {text!r}: expected e.g. 10m, 90s, 1h or 1h30m")
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if not s:
        raise UsageError("empty duration")
    return timedelta(seconds=total)


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """``now`` or ISO 8601, with or without a UTC offset (without: this machine's local time)."""
    if text.strip().lower() == "now":
        return (now or datetime.now()).astimezone()
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"bad time {text!r}: expected ISO 8601 (2026-11-25T10:15:00+01:00) or 'now'") from None
    return dt.astimezone()  # a naive time is read as local time


def parse_size(text: str) -> int:
    """``200MB`` (10^6), ``200MiB`` (2^20), ``1G``, or plain bytes."""
    m = _SIZE_RE.fullmatch(text.strip())
    if m is None:
        raise UsageError(f"bad size {text!r}: expected e.g. 200MB, 1GiB or a number of bytes")
    unit = m.group(2).lower()
    power = "kmgt".index(unit) + 1 if unit else 0
    return int(float(m.group(1)) * (1024 if m.group(3) else 1000) ** power)


@dataclass(frozen=True)
class Window:
    """[start, end] around `at`, on one node's clock."""

    at: datetime
    start: datetime
    end: datetime

    @classmethod
    def around(cls, at: datetime, before: timedelta, after: timedelta) -> Window:
        return cls(at, at - before, at + after)

    def shifted(self, seconds: float) -> Window:
        d = timedelta(seconds=seconds)
        return Window(self.at + d, self.start + d, self.end + d)

    def as_json(self) -> dict[str, Any]:
        return {
            "at": iso(self.at, "milliseconds"),
            "start": iso(self.start, "milliseconds"),
            "end": iso(self.end, "milliseconds"),
            "before_s": (self.at - self.start).total_seconds(),
            "after_s": (self.end - self.at).total_seconds(),
        }
