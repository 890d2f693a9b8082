"""collect/spool.py: a cut log spooled masked, trimmed to its newest whole entries, shares, hashed member reads."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from hasync.collect import LogSpool, render, share
from hasync.collect.spool import BATCH_BYTES, header_line
from hasync.logcut import LogRecord
from hasync.masking import Masker

HEADER = "# hasync HA run log of n; times are local, UTC offset +00:00\n"


def entry(i: int, extra: str = "") -> str:
    return f"2026-01-01 00:00:{i:02d},000 INFO [a] event {i}\n{extra}"


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[LogSpool]:
    s = LogSpool(tmp_path, Masker(["pair-token-value"]))
    yield s
    s.close()


def content(s: LogSpool) -> bytes:
    s.file.flush()
    s.file.seek(0)
    return s.file.read()


def test_share() -> None:
    assert share([10, 10], 100) == [10, 10]
    assert share([10, 1000], 100) == [10, 90]
    assert share([500, 1000], 100) == [50, 50]
    assert share([5, 7], -3) == [0, 0]
    assert share([], 100) == []


def test_member_reader_hashes_what_tar_reads(tmp_path: Path) -> None:
    spool = LogSpool(tmp_path, Masker())
    spool.feed("# hasync HA run log of n; times are local, UTC offset +00:00\n")
    spool.feed("2026-01-01 00:00:00,000 INFO [a] one\n  cont\n2026-01-01 00:00:01,000 INFO [a] two\n")
    t = spool.trim(10_000, "n")
    reader = spool.reader(t)
    data = io.BufferedReader(reader).read()
    assert len(data) == t.size and reader.sha256.hexdigest() == hashlib.sha256(data).hexdigest()
    assert (spool.entries, spool.lines) == (2, 3)
    spool.close()


def test_peer_bytes_split_anywhere_are_joined_and_masked_again(spool: LogSpool) -> None:
    text = HEADER + entry(1, "  héllo token=abc pair-token-value\n") + entry(2)
    data = text.encode()
    cut = data.index("é".encode()) + 1  # inside the two bytes of é, and inside the secret
    for piece in (data[:cut], data[cut : cut + 30], data[cut + 30 :]):
        spool.feed_bytes(piece)
    spool.close_input()
    want = HEADER + entry(1, "  héllo token=*** ***\n") + entry(2)
    assert content(spool) == want.encode()
    assert (spool.entries, spool.lines, spool.size) == (2, 3, len(want.encode()))
    assert spool.headers == [(0, HEADER.encode())]


def test_an_unfinished_last_line_gets_its_newline(spool: LogSpool) -> None:
    spool.feed(entry(1) + "2026-01-01 00:00:02,000 INFO [a] cut short")
    assert content(spool) == entry(1).encode()  # the unfinished line waits for its end
    spool.close_input()
    assert content(spool) == (entry(1) + "2026-01-01 00:00:02,000 INFO [a] cut short\n").encode()
    assert spool.entries == 2


def test_a_monstrous_line_is_spooled_before_its_end(spool: LogSpool) -> None:
    spool.feed("x" * (2 << 20))
    assert spool.size == 2 << 20  # not held in memory until a newline comes


def test_trim_keeps_the_newest_whole_entries_under_the_offset_in_force(spool: LogSpool) -> None:
    later = HEADER.replace("+00:00", "+01:00")
    entries = [entry(i, "  continuation\n" if i % 2 else "") for i in range(40)]
    spool.feed(HEADER + "".join(entries[:20]) + later + "".join(entries[20:]))
    spool.close_input()
    assert spool.trim(spool.size, "n").start == 0  # it fits: nothing left out

    t = spool.trim(1000, "n")
    assert t.size <= 1000 and t.prefix.startswith(later.encode())
    note = t.prefix[len(later) :].decode()
    dropped = f"the {t.dropped_lines} oldest lines ({t.start} bytes)"
    assert note == f"# hasync collect: the size guard left out {dropped} of n's window\n"
    kept = content(spool)[t.start :].decode()
    first_kept = next(i for i, e in enumerate(entries) if kept.startswith(e))  # a whole entry starts the rest
    assert kept == "".join(entries[first_kept:]) and first_kept > 20
    assert t.dropped_entries == first_kept
    assert t.dropped_lines == sum(e.count("\n") for e in entries[:first_kept])  # header lines not counted
    assert t.dropped_bytes == t.start
    reader = spool.reader(t)
    assert io.BufferedReader(reader).read() == t.prefix + kept.encode()


def test_render_writes_a_header_at_each_offset_change_and_masks() -> None:
    def record(i: int, tz: timezone, message: str) -> LogRecord:
        ts = datetime(2026, 1, 1, 0, 0, i, tzinfo=tz)
        return LogRecord(ts, "INFO", "a", message, f"{ts:%Y-%m-%d %H:%M:%S},000 INFO [a] {message}\n", "ha.log", i)

    utc, plus1 = UTC, timezone(timedelta(hours=1))
    records = [record(0, utc, "one password=p1"), record(1, utc, "two"), record(2, plus1, "three")]
    text = "".join(render(records, Masker(), "n"))
    assert text == (
        header_line("n", "+00:00")
        + records[0].text.replace("password=p1", "password=***")
        + records[1].text
        + header_line("n", "+01:00")
        + records[2].text
    )
    big = [record(i % 60, utc, "x" * 1000) for i in range(BATCH_BYTES // 1000 + 10)]
    batches = list(render(big, Masker(), "n"))
    assert len(batches) == 2 and len(batches[0]) >= BATCH_BYTES  # handed on in batches, memory bounded
