"""One node's cut log, masked, on disk (`LogSpool`), and the size guard's trims and fair shares."""

from __future__ import annotations

import codecs
import hashlib
import io
import re
import tempfile
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from hasync.fsutil import TMP_PREFIX
from hasync.logcut import ENTRY_RE, CutStats, LogRecord
from hasync.masking import Masker

BATCH_BYTES = 256 << 10  # log text handed on at a time: the memory a cut holds, whatever the window
MAX_CARRY = 1 << 20  # an unfinished line longer than this is spooled before its end arrives


def header_line(node: str, offset: str) -> str:
    """The first line of a cut log (and of each change of UTC offset), as in the HA run log itself."""
    return f"# hasync HA run log of {node}, cut by hasync collect; times are local, UTC offset {offset}\n"


def render(records: Iterable[LogRecord], masker: Masker, node: str) -> Generator[str, None, None]:
    """Masked log text of `records` in batches of about BATCH_BYTES, a header line at each offset change."""
    offset: str | None = None
    buf: list[str] = []
    size = 0
    for r in records:
        if r.utc_offset != offset:
            offset = r.utc_offset
            buf.append(header_line(node, offset))
        buf.append(r.text)
        size += len(r.text)
        if size >= BATCH_BYTES:
            yield masker.text("".join(buf))
            buf, size = [], 0
    if buf:
        yield masker.text("".join(buf))


_HEADER_RE = re.compile(r"^# .*UTC offset [+-]\d\d:?\d\d.*\n", re.MULTILINE)
_ENTRY_LINE_RE = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", re.MULTILINE)


@dataclass(frozen=True)
class Trim:
    """How a spool goes into the bundle: `prefix`, then the spool from `start` on."""

    prefix: bytes
    start: int
    size: int  # of the member: len(prefix) + spool size - start
    dropped_lines: int = 0
    dropped_entries: int = 0
    dropped_bytes: int = 0


class LogSpool:
    """One node's cut log on disk (an anonymous temp file), masked, with what the size guard needs."""

    def __init__(self, directory: Path, masker: Masker) -> None:
        self.file: IO[bytes] = tempfile.TemporaryFile(dir=directory, prefix=TMP_PREFIX)
        self.masker = masker
        self.size = 0
        self.lines = 0  # log lines, header lines not counted
        self.entries = 0
        self.headers: list[tuple[int, bytes]] = []  # (position, header line): where the UTC offset changes
        self._carry = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def feed_bytes(self, data: bytes, remask: bool = True) -> None:
        self.feed(self._decoder.decode(data), remask)

    def feed(self, text: str, remask: bool = False) -> None:
        """Append log text; `remask` for text from elsewhere (the peer), masked again here line by line."""
        text = self._carry + text
        cut = text.rfind("\n") + 1
        if cut == 0 and len(text) <= MAX_CARRY:
            self._carry = text
            return
        if cut == 0:
            cut = len(text)  # a monstrous line: spool it in pieces rather than hold it
        self._carry = text[cut:]
        self._write(text[:cut], remask)

    def close_input(self) -> None:
        rest = self._carry + self._decoder.decode(b"", final=True)
        self._carry = ""
        if rest:
            self._write(rest if rest.endswith("\n") else rest + "\n", True)

    def _write(self, text: str, remask: bool) -> None:
        if remask:
            text = self.masker.text(text)
        data = text.encode("utf-8")
        n_headers = 0
        if "UTC offset" in text:
            for m in _HEADER_RE.finditer(text):
                pos = self.size + len(text[: m.start()].encode("utf-8"))
                self.headers.append((pos, m.group().encode("utf-8")))
                n_headers += 1
        self.file.write(data)
        self.size += len(data)
        self.lines += data.count(b"\n") - n_headers
        self.entries += sum(1 for _ in _ENTRY_LINE_RE.finditer(data))

    def trim(self, budget: int, node: str) -> Trim:
        """Keep the newest whole entries that fit in `budget` bytes (the header line included)."""
        self.file.flush()
        if self.size <= budget:
            return Trim(b"", 0, self.size)
        note_room = 200
        need = self.size - max(0, budget - note_room - max((len(h) for _, h in self.headers), default=0))
        cut = self._entry_start_at_or_after(need)
        lines, entries, n_headers = self._count(cut)
        dropped = lines - n_headers
        header = b""  # the offset line in force at the cut, so the kept lines still say their offset
        for pos, line in self.headers:
            if pos < cut:
                header = line
        note = (
            f"# hasync collect: the size guard left out the {dropped} oldest lines ({cut} bytes) of {node}'s window\n"
        ).encode()
        prefix = header + note
        return Trim(prefix, cut, len(prefix) + self.size - cut, dropped, entries, cut)

    def _entry_start_at_or_after(self, pos: int) -> int:
        f = self.file
        if pos <= 0:
            return 0
        f.seek(pos - 1)
        if f.read(1) != b"\n":
            f.readline()  # finish the line we landed in
        while True:
            at = f.tell()
            line = f.readline()
            if not line:
                return self.size
            if ENTRY_RE.match(line):
                return at

    def _count(self, end: int) -> tuple[int, int, int]:
        """Lines, entries and header lines in the spool's first `end` bytes (which end at a line start)."""
        f = self.file
        f.seek(0)
        lines = entries = 0
        left = end
        tail = b""
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)
            lines += chunk.count(b"\n")
            data = tail + chunk
            last = data.rfind(b"\n") + 1
            entries += sum(1 for _ in _ENTRY_LINE_RE.finditer(data, 0, last))
            tail = data[last:]
        n_headers = sum(1 for pos, _ in self.headers if pos < end)
        return lines, entries, n_headers

    def reader(self, trim: Trim, on_read: Callable[[int], None] | None = None) -> _MemberReader:
        self.file.seek(trim.start)
        return _MemberReader(trim.prefix, self.file, trim.size - len(trim.prefix), on_read)

    def close(self) -> None:
        self.file.close()


class _MemberReader(io.RawIOBase):
    """`prefix` then `length` bytes of `f`, hashed (SHA-256) as tarfile reads them."""

    def __init__(self, prefix: bytes, f: IO[bytes], length: int, on_read: Callable[[int], None] | None) -> None:
        super().__init__()
        self._prefix = prefix
        self._f = f
        self._left = length
        self._on_read = on_read
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        # Full reads only (tarfile takes a short read for the end of the data).
        want = len(self._prefix) + self._left if n is None or n < 0 else n
        out = self._prefix[:want]
        self._prefix = self._prefix[len(out) :]
        more = min(want - len(out), self._left)
        if more > 0:
            data = self._f.read(more)
            self._left -= len(data)
            out += data
        self.sha256.update(out)
        if self._on_read is not None and out:
            self._on_read(len(out))
        return out


def share(sizes: list[int], budget: int) -> list[int]:
    """Max-min fair shares of `budget`: whoever needs less than an equal part keeps all of it."""
    out = [0] * len(sizes)
    left = max(0, budget)
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    for k, i in enumerate(order):
        out[i] = min(sizes[i], left // (len(sizes) - k))
        left -= out[i]
    return out


def cut_json(st: CutStats) -> dict[str, Any]:
    """A cut's stats as sent at the end of the log stream and kept in the manifest."""
    return {
        "files_read": st.files_read,
        "files_skipped": st.files_skipped,
        "errors": st.errors,
        "entries": st.entries,
        "lines": st.lines,
        "truncated_entries": st.truncated_entries,
    }
