"""The wall clock (hasync.clock): iso() of epoch seconds and datetimes, the test-only offset."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from hasync import clock
from hasync.clock import OFFSET_ENV, iso

PLUS_8 = timezone(timedelta(hours=8))


@pytest.fixture
def local_plus_8(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This host's zone as UTC+8 (a POSIX TZ string: no tz database needed)."""
    monkeypatch.setenv("TZ", "XST-8")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_none_stays_none() -> None:
    assert iso(None) is None
    assert iso(None, "milliseconds", UTC) is None


def test_epoch_seconds_int_or_float() -> None:
    assert iso(0, tz=UTC) == "1970-01-01T00:00:00+00:00"
    assert iso(1.5, tz=UTC) == "1970-01-01T00:00:01+00:00", "seconds by default: truncated, never rounded up"
    assert iso(1.5, "milliseconds", UTC) == "1970-01-01T00:00:01.500+00:00"
    assert iso(10**9, "microseconds", timezone(timedelta(hours=-5, minutes=-30))) == (
        "2001-09-08T20:16:40.000000-05:30"
    )


def test_an_aware_datetime_is_shown_in_the_zone_asked() -> None:
    when = datetime(2026, 11, 25, 17, 0, 0, 123456, tzinfo=PLUS_8)
    assert iso(when, tz=UTC) == "2026-11-25T09:00:00+00:00"
    assert iso(when, "milliseconds", UTC) == "2026-11-25T09:00:00.123+00:00"
    assert iso(when, tz=PLUS_8) == "2026-11-25T17:00:00+08:00"


def test_the_default_zone_is_this_hosts(local_plus_8: None) -> None:
    assert iso(0) == "1970-01-01T08:00:00+08:00"
    assert iso(datetime(2026, 11, 25, 9, 0, tzinfo=UTC)) == "2026-11-25T17:00:00+08:00"
    assert datetime.fromisoformat(iso(clock.now())).utcoffset() == timedelta(hours=8)


def test_the_test_offset_moves_the_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OFFSET_ENV, "-3600.5")
    assert clock._offset() == -3600.5
    for unusable in ("", "soon"):
        monkeypatch.setenv(OFFSET_ENV, unusable)
        assert clock._offset() == 0.0
    monkeypatch.setattr(clock, "OFFSET_S", 3600.0)
    assert 3599 < clock.now() - time.time() < 3601
    skewed = clock.now_utc()
    assert skewed.tzinfo is UTC and timedelta(minutes=59) < skewed - datetime.now(UTC) < timedelta(minutes=61)
