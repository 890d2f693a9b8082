"""Cut the HA run log (current ``ha.log`` and rotated ``.gz`` files) to a time window, entry by entry, in flat memory.

The log format is SPEC §8: ``YYYY-MM-DD HH:MM:SS,mmm LEVEL [component] message key=value ...``
in local time, with ``# ... UTC offset +HH:MM`` at the top of each file. A line that does
not start with a timestamp (a traceback line) belongs to the entry above it, so an entry
is yielded whole or not at all.

Which files are read: a rotated file's name carries its rotation time, the latest time
any of its entries can have; the previous rotated file's name bounds it from below. A
file whose range lies wholly outside the window is skipped without being opened; the
others are read line by line and left as soon as an entry is later than the window (plus
`CLOCK_SLACK` for a clock stepped back while it was written), so at most the part of a
``.gz`` file up to the window's end is decompressed.

Use::

    stats = CutStats()
    for rec in iter_window(log_dir, start, end, stats=stats):
        print(rec.ts.isoformat(), rec.level, rec.component, rec.message, rec.source)
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import re
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from hasync.errors import BadRequest
from hasync.halog import LOG_NAME, ROTATED_RE

# An entry's first line: a timestamp, then a space. Bytes, so lines outside the window are never decoded.
ENTRY_RE = re.compile(rb"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
OFFSET_RE = re.compile(rb"# .*UTC offset ([+-])(\d\d):?(\d\d)")
FIELDS_RE = re.compile(r"\S+ \S+ (\S+)(?: \[([^\]]*)\])? ?(.*)")
KV_START_RE = re.compile(r"\s[A-Za-z_][\w.-]*=")
KV_RE = re.compile(r'([A-Za-z_][\w.-]*)=("(?:[^"\\]|\\.)*"|\S*)')

STAMP_LEN = 23  # "YYYY-MM-DD HH:MM:SS,mmm"
CLOCK_SLACK = timedelta(seconds=60)
# One rotated-name second may hold entries up to its last millisecond.
NAME_RESOLUTION = timedelta(seconds=1)
MAX_LINE = 1 << 20  # a longer line is read in pieces, each kept as a continuation line
MAX_ENTRY = 4 << 20  # past this an entry's further lines are dropped (and counted), never held in memory
STATS_EVERY = 4096  # lines between updates of the progress counters
_EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
_LATEST = datetime(9999, 12, 30, tzinfo=UTC) - CLOCK_SLACK
MAX_TIME_TEXT = 64  # an ISO 8601 time with microseconds and offset is 32 characters


def clamp(dt: datetime) -> datetime:
    """An aware time within the years the cut computes with: the window's arithmetic (`end + CLOCK_SLACK`,
    a file's UTC offset) never leaves datetime's range. No log entry is that old or that new."""
    return min(max(dt, _EARLIEST), _LATEST)


def window_time(value: Any, name: str) -> datetime:
    """A bound of a log window from a request (`/v1/diag` log_summary, `/v1/collect/logs`): an ISO 8601
    time with a UTC offset, clamped (`clamp`). Anything else raises BadRequest (400)."""
    if value is None:
        raise BadRequest(f"missing {name}: an ISO 8601 time with a UTC offset")
    if not isinstance(value, str) or len(value) > MAX_TIME_TEXT:
        raise BadRequest(f"{name} {value!r:.40} is not an ISO 8601 time")
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name}={value!r:.40} is not an ISO 8601 time") from None
    if dt.tzinfo is None:
        raise BadRequest(f"{name} must carry a UTC offset")
    return clamp(dt)


@dataclass(frozen=True)
class LogRecord:
    """One whole log entry: its first line and any continuation lines (e.g. a traceback)."""

    ts: datetime  # aware, in the UTC offset of the file it came from
    level: str
    component: str
    message: str  # the first line after ``[component]``, key=value pairs included
    text: str  # the entry as written, every line ending with a newline
    source: str  # the file name, e.g. ``ha.log.2026-11-25_10-15-00.gz``
    line: int  # 1-based line number of the first line in `source`

    @property
    def utc_offset(self) -> str:
        """``+HH:MM`` of the file the entry came from."""
        return _fmt_offset(self.ts.utcoffset() or timedelta(0))

    @property
    def event(self) -> str:
        """The message without its trailing key=value pairs: what to group entries by."""
        m = KV_START_RE.search(" " + self.message)
        return self.message if m is None else self.message[: max(0, m.start() - 1)].rstrip()

    @property
    def lines(self) -> int:
        return self.text.count("\n")

    def fields(self) -> dict[str, str]:
        """The key=value pairs of the first line; quoted values unquoted."""
        out: dict[str, str] = {}
        for k, v in KV_RE.findall(self.message):
            if v.startswith('"') and v.endswith('"') and len(v) >= 2:
                v = v[1:-1].replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
            out[k] = v
        return out


@dataclass(frozen=True)
class LogFile:
    """One file of the HA run log. `rotated_at` is when it was rotated out (None: the current file)."""

    path: Path
    rotated_at: datetime | None
    seq: int = 0  # the ``-N`` suffix of a second rotation within one second

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class CutStats:
    """What a cut read and skipped; the byte counters move while it runs (for a progress bar)."""

    files_read: list[str] = field(default_factory=list)
    files_skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "<file>: <what went wrong>"; the cut goes on
    bytes_total: int = 0  # on-disk size of the files to read
    bytes_read: int = 0  # on-disk bytes consumed so far
    entries: int = 0  # entries yielded
    lines: int = 0  # lines yielded
    truncated_entries: int = 0  # entries longer than MAX_ENTRY, cut short


def _fmt_offset(off: timedelta) -> str:
    minutes = int(off.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    h, m = divmod(abs(minutes), 60)
    return f"{sign}{h:02d}:{m:02d}"


def _stamp(dt: datetime) -> bytes:
    return f"{dt:%Y-%m-%d %H:%M:%S},{dt.microsecond // 1000:03d}".encode()


def _local_tz(at: datetime) -> timezone:
    """This machine's UTC offset at `at` (for a file without an offset line)."""
    try:
        off = at.astimezone().utcoffset()
    except (OverflowError, OSError, ValueError):  # far outside what the C library converts
        off = datetime.now().astimezone().utcoffset()
    return timezone(off or timedelta(0))


def _name_time(stamp: str) -> datetime:
    # Rotated names are written in the rotating machine's local time without an offset; read
    # them with this machine's zone rules, which is right for the node's own logs (DST included).
    return datetime.strptime(stamp, "%Y-%m-%d_%H-%M-%S").astimezone()


def log_files(log_dir: Path) -> list[LogFile]:
    """The HA run log's files, oldest first: rotated ones by rotation time, then ``ha.log``."""
    try:
        names = os.listdir(log_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    rotated: list[LogFile] = []
    for n in names:
        m = ROTATED_RE.fullmatch(n)
        if m is None:
            continue
        suffix = n[len("ha.log.") + 19 : -len(".gz")]  # "" or "-N"
        rotated.append(LogFile(log_dir / n, _name_time(m.group(1)), int(suffix[1:]) if suffix else 0))
    # Not a plain name sort: "...-1.gz" (the second rotation in a second) sorts before ".gz".
    rotated.sort(key=lambda f: (f.rotated_at, f.seq))
    if LOG_NAME in names:
        rotated.append(LogFile(log_dir / LOG_NAME, None))
    return rotated


def overlaps(file: LogFile, after: datetime | None, start: datetime, end: datetime) -> bool:
    """Whether `file` can hold entries in [start, end]; `after` is the previous file's rotation time."""
    if file.rotated_at is not None and file.rotated_at + NAME_RESOLUTION < start:
        return False  # every entry was written before the file was rotated out
    return not (after is not None and after > end)  # every entry was written after the previous rotation


def iter_window(log_dir: Path, start: datetime, end: datetime, *, stats: CutStats | None = None) -> Iterator[LogRecord]:
    """The entries of the HA run log in `log_dir` whose timestamp t has start <= t <= end, in file order.

    `start` and `end` must be aware datetimes. Unreadable or damaged files are recorded in
    `stats.errors` and skipped; the entries read before the damage are kept.
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("iter_window needs aware datetimes (with a UTC offset)")
    start, end = clamp(start), clamp(end)
    st = stats if stats is not None else CutStats()
    done: set[str] = set()
    after: datetime | None = None
    first_pass = True
    while True:
        plan: list[tuple[LogFile, bool]] = []
        for f in log_files(log_dir):
            if f.name in done:
                continue
            if f.rotated_at is None:
                if first_pass:  # counted now for the progress total; decided on below
                    plan.append((f, overlaps(f, after, start, end)))
                continue
            done.add(f.name)
            plan.append((f, overlaps(f, after, start, end)))
            after = f.rotated_at
        st.bytes_total += sum(_size(f.path) for f, wanted in plan if wanted)
        first_pass = False
        rotated = [(f, wanted) for f, wanted in plan if f.rotated_at is not None]
        if not rotated:
            break
        for i, (f, wanted) in enumerate(rotated):
            if not wanted:
                st.files_skipped.append(f.name)
                continue
            ended = yield from _read_file(f, start, end, st)
            if ended:
                # Later files were written later still: nothing more can be in the window.
                st.files_skipped += [g.name for g, _ in rotated[i + 1 :]]
                if (log_dir / LOG_NAME).exists():
                    st.files_skipped.append(LOG_NAME)
                return
        # Loop: a rotation while we read made a new .gz holding what ha.log held; read it before ha.log.
    current = log_dir / LOG_NAME
    if not current.exists():
        return
    cur = LogFile(current, None)
    if not overlaps(cur, after, start, end):
        st.files_skipped.append(LOG_NAME)
        return
    yield from _read_file(cur, start, end, st)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class _Bounds:
    """The window as timestamp strings in one file's UTC offset: entries compare as bytes."""

    def __init__(self, start: datetime, end: datetime, tz: timezone) -> None:
        self.tz = tz
        s = start.astimezone(tz)
        # Stamps have millisecond resolution: t >= start <=> t >= start rounded up to the millisecond.
        if s.microsecond % 1000:
            s += timedelta(microseconds=1000 - s.microsecond % 1000)
        self.lo = _stamp(s)
        self.hi = _stamp(end.astimezone(tz))
        self.stop = _stamp((end + CLOCK_SLACK).astimezone(tz))


def _open(f: LogFile) -> tuple[io.BufferedIOBase, io.BufferedIOBase]:
    """The raw file (its position is the progress) and the reader of its lines; the caller closes both."""
    raw = open(f.path, "rb")
    if f.path.name.endswith(".gz"):
        return raw, gzip.GzipFile(fileobj=raw, mode="rb")
    return raw, raw


def _record(pending: list[bytes], tz: timezone, source: str, lineno: int) -> LogRecord:
    text = b"".join(pending).decode("utf-8", "replace")
    if not text.endswith("\n"):
        text += "\n"
    first = text[: text.index("\n")]
    s = first[:STAMP_LEN]
    # Fixed-width fields: slicing is many times faster than strptime.
    ts = datetime(
        int(s[0:4]), int(s[5:7]), int(s[8:10]), int(s[11:13]), int(s[14:16]), int(s[17:19]), int(s[20:23]) * 1000, tz
    )
    m = FIELDS_RE.match(first)
    level, component, message = (m.group(1), m.group(2) or "", m.group(3)) if m else ("", "", first[STAMP_LEN:].strip())
    return LogRecord(ts, level, component, message, text, source, lineno)


def _read_file(f: LogFile, start: datetime, end: datetime, st: CutStats) -> Generator[LogRecord, None, bool]:
    """Yield the in-window entries of one file; return True when an entry past the window was seen."""
    try:
        size = f.path.stat().st_size
        raw, reader = _open(f)
    except OSError as exc:
        st.errors.append(f"{f.name}: cannot open: {exc.strerror or exc}")
        return False
    st.files_read.append(f.name)
    base = st.bytes_read

    def tick() -> None:
        st.bytes_read = base + raw.tell()

    with raw, reader:
        ended = yield from _scan(iter(functools.partial(reader.readline, MAX_LINE), b""), start, end, f.name, st, tick)
    st.bytes_read = base + size
    return ended


def _scan(
    lines: Iterator[bytes],
    start: datetime,
    end: datetime,
    source: str,
    st: CutStats,
    tick: Callable[[], None] | None = None,
) -> Generator[LogRecord, None, bool]:
    """The entry assembler: whole in-window entries of `lines`; True when it stopped past the window.

    One loop with local variables only: this runs once per line of every file read.
    """
    b = _Bounds(start, end, _local_tz(start))
    pending: list[bytes] | None = None  # the in-window entry being assembled
    pending_size = 0
    first_line = 0
    lineno = 0
    try:
        for line in lines:
            lineno += 1
            if tick is not None and lineno % STATS_EVERY == 0:
                tick()
            m = ENTRY_RE.match(line)
            if m is None:
                if line.startswith(b"# ") and (o := OFFSET_RE.match(line)) is not None:
                    if pending is not None:  # it ends the entry above, which keeps its own offset
                        yield _emit(pending, b.tz, source, first_line, st)
                        pending = None
                    sign = -1 if o.group(1) == b"-" else 1
                    tz = timezone(sign * timedelta(hours=int(o.group(2)), minutes=int(o.group(3))))
                    b = _Bounds(start, end, tz)
                elif pending is not None:
                    if pending_size + len(line) <= MAX_ENTRY:
                        pending.append(line)
                        pending_size += len(line)
                    elif pending_size <= MAX_ENTRY:
                        pending.append(b"[hasync: entry longer than %d bytes, the rest left out]\n" % MAX_ENTRY)
                        pending_size = MAX_ENTRY + 1
                        st.truncated_entries += 1
                continue
            if pending is not None:
                yield _emit(pending, b.tz, source, first_line, st)
                pending = None
            stamp = m.group(1)
            if stamp > b.hi:
                if stamp > b.stop:
                    return True
                continue
            if stamp >= b.lo:
                pending, pending_size, first_line = [line], len(line), lineno
    except (OSError, EOFError, zlib.error) as exc:
        # A damaged or truncated .gz (or a read error): keep what was read, go on with the next file.
        st.errors.append(f"{source}: read failed after line {lineno}: {exc}")
    if pending is not None:
        yield _emit(pending, b.tz, source, first_line, st)
    return False


def parse_lines(
    lines: Iterable[bytes | str],
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    source: str = "-",
    stats: CutStats | None = None,
) -> Iterator[LogRecord]:
    """Whole entries (in [start, end] when given) of log text from elsewhere: a peer's stream, a bundle's ha.log.

    `lines` keep their newlines; ``# ... UTC offset`` lines set the offset of what follows.
    """
    st = stats if stats is not None else CutStats()
    raw = (ln.encode("utf-8") if isinstance(ln, str) else ln for ln in lines)
    # No stop past the window: text from elsewhere need not be in time order, so the end is checked per entry.
    for rec in _scan(raw, start if start is not None else _EARLIEST, _LATEST, source, st):
        if end is None or rec.ts <= end:
            yield rec


def _emit(pending: list[bytes], tz: timezone, source: str, lineno: int, st: CutStats) -> LogRecord:
    rec = _record(pending, tz, source, lineno)
    st.entries += 1
    st.lines += len(pending)
    return rec
