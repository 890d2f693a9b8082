"""The agent's wall clock, with a test-only offset (HASYNC_TEST_CLOCK_OFFSET_S) for clock-skew tests.

Wall-clock times (check and alarm times, `/v1/info` time, last sync, HA log
lines) come from `now()`. Durations and ages never do: they use the monotonic
clock, or compare two readings of the same node's clock, so a skew between
the nodes never shows in a lag. The offset exists for the tests of that
property only; production never sets it.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, tzinfo
from typing import overload

OFFSET_ENV = "HASYNC_TEST_CLOCK_OFFSET_S"


def _offset() -> float:
    try:
        return float(os.environ.get(OFFSET_ENV, "0") or 0)
    except ValueError:
        return 0.0


OFFSET_S = _offset()


def now() -> float:
    """Seconds since the epoch on this node's (possibly test-skewed) wall clock."""
    return time.time() + OFFSET_S


def now_utc() -> datetime:
    return datetime.fromtimestamp(now(), UTC)


@overload
def iso(when: float | datetime, timespec: str = ..., tz: tzinfo | None = ...) -> str: ...
@overload
def iso(when: None, timespec: str = ..., tz: tzinfo | None = ...) -> None: ...
def iso(when: float | datetime | None, timespec: str = "seconds", tz: tzinfo | None = None) -> str | None:
    """ISO 8601 with its UTC offset (in `tz`, default this host's zone) of a datetime or epoch seconds; None stays None.

    Status documents and the HA log show seconds in local time; alarm times (SPEC §3) milliseconds in UTC."""
    if when is None:
        return None
    dt = datetime.fromtimestamp(when, UTC) if isinstance(when, int | float) else when
    return dt.astimezone(tz).isoformat(timespec=timespec)
