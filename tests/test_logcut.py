"""The HA log window cut: real rotated .gz files, exact entries, whole tracebacks, files left unread."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from hasync.logcut import CLOCK_SLACK, CutStats, LogRecord, iter_window, log_files

STEP_S = 10
PER_FILE = 40
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/opt/hasync/replication/standby.py", line 412, in apply\n'
    "    os.replace(tmp, target)\n"
    "OSError: [Errno 28] No space left on device\n"
)


@dataclass(frozen=True)
class Entry:
    ts: datetime
    text: str  # whole entry, lines ending in newlines


def offset_str(dt: datetime) -> str:
    off = dt.utcoffset() or timedelta(0)
    minutes = int(off.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def fmt(ts: datetime, level: str, component: str, message: str) -> str:
    return f"{ts:%Y-%m-%d %H:%M:%S},{ts.microsecond // 1000:03d} {level} [{component}] {message}\n"


def base_time(days_ago: int = 2) -> datetime:
    """A whole minute some days ago, local time (aware)."""
    now = datetime.now().replace(second=0, microsecond=0)
    return (now - timedelta(days=days_ago)).replace(minute=0).astimezone()


def make_entries(t0: datetime, n: int, tracebacks: dict[int, str] | None = None, extra: str = "") -> list[Entry]:
    """`n` entries every STEP_S seconds from `t0`, milliseconds below 400 (so a window edge at .5 s is clear)."""
    out = []
    for k in range(n):
        ts = t0 + timedelta(seconds=k * STEP_S, milliseconds=(k * 37) % 400)
        level = ("INFO", "WARN", "ERROR", "DEBUG")[k % 4]
        text = fmt(ts, level, ("check", "standby", "agent")[k % 3], f"event number {k} dir=conf seq={k}{extra}")
        if tracebacks and k in tracebacks:
            text += tracebacks[k]
        out.append(Entry(ts, text))
    return out


def write_log_set(
    log_dir: Path, entries: list[Entry], files: int = 4, per_file: int = PER_FILE, header: bool = True
) -> list[Path]:
    """`files - 1` rotated .gz files plus ha.log, `per_file` entries each, named as halog rotates them."""
    log_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        chunk = entries[i * per_file : (i + 1) * per_file] if i < files - 1 else entries[i * per_file :]
        head = f"# hasync HA run log; times are local, UTC offset {offset_str(chunk[0].ts)}\n" if header else ""
        body = (head + "".join(e.text for e in chunk)).encode()
        if i < files - 1:
            # Rotated a little after its last entry: the name is the rotation time, in local time.
            rotated = (chunk[-1].ts + timedelta(seconds=3)).astimezone()
            path = log_dir / f"ha.log.{rotated:%Y-%m-%d_%H-%M-%S}.gz"
            with gzip.open(path, "wb") as f:
                f.write(body)
        else:
            path = log_dir / "ha.log"
            path.write_bytes(body)
        paths.append(path)
    return paths


def in_window(entries: list[Entry], start: datetime, end: datetime) -> list[Entry]:
    return [e for e in entries if start <= e.ts <= end]


def cut(log_dir: Path, start: datetime, end: datetime) -> tuple[list[LogRecord], CutStats]:
    stats = CutStats()
    return list(iter_window(log_dir, start, end, stats=stats)), stats


@pytest.fixture
def logset(tmp_path: Path) -> tuple[Path, list[Entry], list[Path]]:
    t0 = base_time()
    entries = make_entries(t0, 4 * PER_FILE, tracebacks={58: TRACEBACK, 99: TRACEBACK, 100: TRACEBACK})
    paths = write_log_set(tmp_path / "logs", entries)
    return tmp_path / "logs", entries, paths


def test_window_through_two_rotated_files_is_exact_and_skips_the_others(logset) -> None:  # type: ignore[no-untyped-def]
    log_dir, entries, paths = logset
    t0 = entries[0].ts.replace(microsecond=0)
    start = t0 + timedelta(seconds=600.5)  # middle of the 2nd .gz
    end = t0 + timedelta(seconds=1000.5)  # middle of the 3rd .gz
    # The files the window does not touch are garbage now: reading them would be an error.
    paths[0].write_bytes(b"not gzip at all")
    paths[3].write_bytes(b"\xff\xfe garbage, no entries\n")
    records, stats = cut(log_dir, start, end)
    want = in_window(entries, start, end)
    assert [r.text for r in records] == [e.text for e in want]
    assert [r.ts for r in records] == [e.ts for e in want]
    assert stats.errors == []
    assert stats.files_read == [paths[1].name, paths[2].name]
    assert stats.bytes_total == stats.bytes_read == paths[1].stat().st_size + paths[2].stat().st_size
    assert set(stats.files_skipped) == {paths[0].name, "ha.log"}
    assert stats.entries == len(want) and stats.lines == sum(e.text.count("\n") for e in want)
    # Entry 99 (t0+990 s) starts inside and carries a traceback: whole. Entry 58 (t0+580 s) starts before: absent.
    tb = [r for r in records if "Traceback" in r.text]
    assert len(tb) == 2 and all(r.text.endswith(TRACEBACK) for r in tb)
    assert not any("event number 58 " in r.text for r in records)
    assert records[0].source == paths[1].name and records[-1].source == paths[2].name


def test_window_through_last_rotated_file_and_current_file(logset) -> None:  # type: ignore[no-untyped-def]
    log_dir, entries, paths = logset
    t0 = entries[0].ts.replace(microsecond=0)
    start, end = t0 + timedelta(seconds=1005.5), t0 + timedelta(seconds=1405.5)
    records, stats = cut(log_dir, start, end)
    assert [r.text for r in records] == [e.text for e in in_window(entries, start, end)]
    assert stats.files_read == [paths[2].name, "ha.log"]
    assert records[0].text.startswith(fmt(entries[101].ts, "WARN", "check", "")[:23])


def test_record_fields(logset) -> None:  # type: ignore[no-untyped-def]
    log_dir, entries, _ = logset
    (rec,) = cut(log_dir, entries[5].ts, entries[5].ts)[0]
    assert (rec.level, rec.component) == ("WARN", "agent")
    assert rec.message == "event number 5 dir=conf seq=5"
    assert rec.event == "event number 5"
    assert rec.fields() == {"dir": "conf", "seq": "5"}
    assert rec.utc_offset == offset_str(entries[5].ts) and rec.line == 7  # header + 5 entries + 1
    assert rec.lines == 1


def test_window_bounds_are_inclusive_to_the_millisecond(logset) -> None:  # type: ignore[no-untyped-def]
    log_dir, entries, _ = logset
    a, b = entries[10].ts, entries[12].ts
    assert [r.ts for r in cut(log_dir, a, b)[0]] == [a, entries[11].ts, b]
    assert [r.ts for r in cut(log_dir, a + timedelta(microseconds=1), b - timedelta(microseconds=1))[0]] == [
        entries[11].ts
    ]


def test_empty_and_missing(tmp_path: Path, logset) -> None:  # type: ignore[no-untyped-def]
    log_dir, entries, _ = logset
    assert cut(log_dir, entries[-1].ts + timedelta(hours=1), entries[-1].ts + timedelta(hours=2))[0] == []
    assert cut(log_dir, entries[0].ts - timedelta(hours=2), entries[0].ts - timedelta(hours=1))[0] == []
    assert cut(tmp_path / "nowhere", entries[0].ts, entries[-1].ts) == ([], CutStats())
    with pytest.raises(ValueError):
        list(iter_window(log_dir, entries[0].ts.replace(tzinfo=None), entries[-1].ts))


def test_header_offset_is_honoured(tmp_path: Path) -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    t0 = datetime(2026, 3, 1, 15, 30, tzinfo=ist)
    entries = make_entries(t0, 10)
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    header = "# hasync HA run log; times are local, UTC offset +05:30\n"
    (log_dir / "ha.log").write_text(header + "".join(e.text for e in entries))
    utc = UTC
    records, _ = cut(log_dir, datetime(2026, 3, 1, 10, 0, 15, tzinfo=utc), datetime(2026, 3, 1, 10, 0, 45, tzinfo=utc))
    assert [r.text for r in records] == [e.text for e in entries[2:5]]
    assert records[0].ts == entries[2].ts and records[0].utc_offset == "+05:30"


def test_entries_before_a_header_and_offset_change_mid_file(tmp_path: Path) -> None:
    t0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    first = make_entries(t0, 3)
    # The same instants an hour later written at +01:00 (a DST-like change): same UTC, shifted wall clock.
    later = make_entries(t0.astimezone(timezone(timedelta(hours=1))) + timedelta(seconds=30), 3)
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    text = (
        "# hasync HA run log; times are local, UTC offset +00:00\n"
        + "".join(e.text for e in first)
        + "# hasync HA run log; times are local, UTC offset +01:00\n"
        + "".join(e.text for e in later)
    )
    (log_dir / "ha.log").write_text(text)
    records, _ = cut(log_dir, t0, t0 + timedelta(minutes=5))
    assert [r.text for r in records] == [e.text for e in first + later]
    assert [r.utc_offset for r in records] == ["+00:00"] * 3 + ["+01:00"] * 3


def test_file_without_header_is_local_time(tmp_path: Path) -> None:
    entries = make_entries(base_time(), 10)
    write_log_set(tmp_path / "logs", entries, files=1, header=False)
    records, _ = cut(tmp_path / "logs", entries[3].ts, entries[6].ts)
    assert [r.ts for r in records] == [e.ts for e in entries[3:7]]


def test_rotations_within_one_second_sort_in_rotation_order(tmp_path: Path) -> None:
    t = base_time() + timedelta(seconds=7)
    stamps = [t + timedelta(milliseconds=150 * k) for k in range(6)]
    entries = [Entry(ts, fmt(ts, "INFO", "a", f"e{k}")) for k, ts in enumerate(stamps)]
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    stamp = f"{t:%Y-%m-%d_%H-%M-%S}"  # two rotations within that second: the second one gets "-1"
    for name, chunk in ((f"ha.log.{stamp}.gz", entries[:2]), (f"ha.log.{stamp}-1.gz", entries[2:4])):
        with gzip.open(log_dir / name, "wb") as f:
            f.write("".join(e.text for e in chunk).encode())
    (log_dir / "ha.log").write_text("".join(e.text for e in entries[4:]))
    assert [f.name for f in log_files(log_dir)] == [f"ha.log.{stamp}.gz", f"ha.log.{stamp}-1.gz", "ha.log"]
    assert [r.text for r in cut(log_dir, entries[0].ts, entries[-1].ts)[0]] == [e.text for e in entries]


def test_gz_is_decompressed_only_up_to_the_window(tmp_path: Path) -> None:
    """A .gz whose tail is cut off reads fine when the window ends well before the damage."""
    t0 = base_time()
    head = make_entries(t0, 50)
    # Far past the window: random-ish bulk so the file does not compress to nothing, then cut the file short.
    bulk = [
        fmt(t0 + timedelta(hours=1, seconds=k), "INFO", "a", f"bulk {k} noise={os.urandom(24).hex()}")
        for k in range(30000)
    ]
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    rotated = (t0 + timedelta(hours=10)).astimezone()
    path = log_dir / f"ha.log.{rotated:%Y-%m-%d_%H-%M-%S}.gz"
    with gzip.open(path, "wb") as f:
        f.write(("".join(e.text for e in head) + "".join(bulk)).encode())
    data = path.read_bytes()
    assert len(data) > 600_000
    path.write_bytes(data[: len(data) // 2])
    later = log_dir / f"ha.log.{rotated + timedelta(hours=1):%Y-%m-%d_%H-%M-%S}.gz"
    later.write_bytes(b"never opened")
    records, stats = cut(log_dir, head[10].ts, head[20].ts)
    assert [r.text for r in records] == [e.text for e in head[10:21]] and stats.errors == []
    assert stats.files_read == [path.name] and stats.files_skipped == [later.name]
    # A window reaching into the damage keeps what was readable and says what broke.
    later.unlink()
    records, stats = cut(log_dir, head[10].ts, t0 + timedelta(hours=10))
    assert records[: len(head) - 10] == [r for r in records if r.ts <= head[-1].ts]
    assert len(stats.errors) == 1 and path.name in stats.errors[0]


def test_damaged_file_in_the_window_does_not_stop_the_cut(logset) -> None:  # type: ignore[no-untyped-def]
    log_dir, entries, paths = logset
    paths[1].write_bytes(b"\x1f\x8b\x08\x00 broken")
    records, stats = cut(log_dir, entries[0].ts, entries[-1].ts)
    assert [r.text for r in records] == [e.text for e in entries[:PER_FILE] + entries[2 * PER_FILE :]]
    assert len(stats.errors) == 1 and paths[1].name in stats.errors[0]


def test_stop_is_clock_slack_past_the_window(tmp_path: Path) -> None:
    """An entry after a small clock step back is still found; the file is left once entries are far past."""
    t0 = base_time()
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    lines = [
        fmt(t0, "INFO", "a", "in"),
        fmt(t0 + timedelta(seconds=20), "INFO", "a", "past the window, within the slack"),
        fmt(t0 + timedelta(seconds=5), "INFO", "a", "clock stepped back: in again"),
        fmt(t0 + CLOCK_SLACK + timedelta(seconds=30), "INFO", "a", "far past: stop here"),
        fmt(t0 + timedelta(seconds=6), "INFO", "a", "never read"),
    ]
    (log_dir / "ha.log").write_text("".join(lines))
    records, _ = cut(log_dir, t0, t0 + timedelta(seconds=10))
    assert [r.message for r in records] == ["in", "clock stepped back: in again"]


def test_long_entry_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hasync.logcut as logcut

    monkeypatch.setattr(logcut, "MAX_ENTRY", 1000)
    t0 = base_time()
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    (log_dir / "ha.log").write_text(fmt(t0, "ERROR", "a", "huge") + "  frame\n" * 1000 + fmt(t0, "INFO", "a", "next"))
    stats = CutStats()
    records = list(iter_window(log_dir, t0, t0, stats=stats))
    assert len(records) == 2 and len(records[0].text) < 1200 and "left out" in records[0].text
    assert records[1].message == "next" and stats.truncated_entries == 1


def test_parse_lines_reads_cut_text_back(logset) -> None:  # type: ignore[no-untyped-def]
    """What a cut produced (a bundle's ha.log, a peer's stream) parses back to the same entries."""
    from hasync.logcut import parse_lines

    log_dir, entries, _ = logset
    records, _ = cut(log_dir, entries[50].ts, entries[120].ts)
    text = "# hasync HA run log of n; times are local, UTC offset " + records[0].utc_offset + "\n"
    text += "".join(r.text for r in records)
    again = list(parse_lines(text.splitlines(keepends=True), source="bundle"))
    assert [(r.ts, r.text, r.level) for r in again] == [(r.ts, r.text, r.level) for r in records]
    some = list(parse_lines(text.splitlines(keepends=True), entries[60].ts, entries[70].ts))
    assert [r.ts for r in some] == [e.ts for e in entries[60:71]]
    assert [r.ts for r in parse_lines([entries[3].text.encode(), entries[1].text.encode()])] == [
        entries[3].ts,
        entries[1].ts,
    ]


def test_window_to_the_ends_of_the_calendar_reads_everything(logset) -> None:  # type: ignore[no-untyped-def]
    """datetime.min/max as bounds (any offset) are clamped in iter_window: no OverflowError from
    `end + CLOCK_SLACK` or a file's UTC offset, every entry is in the window (issue 9 #12 variant)."""
    log_dir, entries, _ = logset
    for tz in (UTC, timezone(timedelta(hours=23, minutes=59)), timezone(-timedelta(hours=23, minutes=59))):
        records, stats = cut(log_dir, datetime.min.replace(tzinfo=tz), datetime.max.replace(tzinfo=tz))
        assert len(records) == len(entries) and not stats.errors, (tz, len(records), stats.errors)
