"""The fault-information bundle (SPEC §9): both nodes' logs, alarms, status and masked configs around an instant.

How a bundle is made (``hasync collect``):

1. The window is [t - before, t + after] on this node's clock; t is ``--at`` or the raise
   time of ``--alarm``.
2. The peer's clock offset is measured NTP-style (`measure_offset`) and the peer cuts its
   logs in the window shifted by that offset, so both halves cover the same real instants.
3. Each node's HA log entries in its window are cut by `hasync.logcut` and spooled, masked,
   to an anonymous temp file: the peer's arrive as a frame stream (`LOG_FRAMES`), never a
   whole file in memory on either side.
4. The size guard (`max_bytes`) drops each node's oldest entries, sharing the room fairly.
5. The ``.tar.gz`` is written under a temp name in the target directory, flushed and
   renamed: ``<node>/ha.log``, ``<node>/alarms.json``, ``<node>/status.json``,
   ``<node>/config.toml`` for each node, then ``manifest.json`` with every file's size and
   SHA-256, the window, the nodes, the clock offset and notes.

Secrets never enter the bundle: `Masker` replaces the pair token, the config's passwords,
passwords in URLs and values of password/secret/token keys, in log lines as in documents;
configs are re-emitted from their parsed values (comments, which may hold anything, are
dropped) and files a config only points to (token file, TLS key) are never read.
"""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import io
import json
import math
import os
import re
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Awaitable, Callable, Generator, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from hasync import __version__
from hasync.errors import HasyncError, PeerError, UsageError
from hasync.logcut import ENTRY_RE, CutStats, LogRecord, iter_window

if TYPE_CHECKING:
    from hasync.config import Config
    from hasync.peer.client import AgentClient

FORMAT_VERSION = 1
DEFAULT_MAX_BYTES = 200_000_000
MASK = "***"
BATCH_BYTES = 256 << 10  # log text handed on at a time: the memory a cut holds, whatever the window
MAX_CARRY = 1 << 20  # an unfinished line longer than this is spooled before its end arrives
INFO_SAMPLES = 5
MANIFEST_ROOM = 16 << 10  # kept free under max_bytes for the manifest itself

# The log stream of GET /v1/collect/logs: frames as in protocol.FRAME_HEADER (1 byte type, 4 bytes length).
L_DATA = b"D"  # UTF-8 log text, masked; frames split anywhere, even inside a character
L_PROGRESS = b"P"  # msgpack {"read": int, "total": int}: on-disk bytes of the files read so far
L_DONE = b"Z"  # msgpack: the cut's stats (logcut.CutStats as JSON); the end of the stream
L_ERR = b"X"  # msgpack {"message": str}: the cut failed; the stream ends
LOG_FRAMES = "application/x-hasync-frames"
FRAME_DATA_MAX = 256 << 10

ProgressFn = Callable[[str, int, int | None], None]  # (what, done, total or None)


# -- arguments ---------------------------------------------------------------------------------------------------
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


def iso(dt: datetime) -> str:
    return dt.astimezone().isoformat(timespec="milliseconds")


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
            "at": iso(self.at),
            "start": iso(self.start),
            "end": iso(self.end),
            "before_s": (self.at - self.start).total_seconds(),
            "after_s": (self.end - self.at).total_seconds(),
        }


# -- masking -----------------------------------------------------------------------------------------------------
_SECRET_WORDS = r"(?:password|passwd|passphrase|secret|token|api[_-]?key|private[_-]?key|credential)"
SECRET_KEY_RE = re.compile(_SECRET_WORDS, re.IGNORECASE)
# user:PASSWORD@ in any text (group 2 is the password): after scheme://, after a mistyped scheme
# ("postgresql:/u:", "webhook:http://u:") or with none at all; a quote before the colon is JSON ("k":"a@b"), and
# "//" after it is a scheme ("http://user@h"), not a password
URL_PASSWORD_RE = re.compile(r"(\b[a-z][a-z0-9+.-]*:/+[^\s:/@\"']*|[^\s:/@\"']+):(?!//)([^\s@]*)@", re.IGNORECASE)
_QUERY_PW_RE = re.compile(r"([?&;](?:pwd|access_token|" + _SECRET_WORDS[3:-1] + r")=)[^&\s#\"']*", re.IGNORECASE)
_KV_RE = re.compile("(" + _SECRET_WORDS + r"[\w.-]*=)(\"(?:[^\"\\\n]|\\.)*\"|[^\s&\"']*)", re.IGNORECASE)
_JSON_KV_RE = re.compile(r'("[^"\n]*' + _SECRET_WORDS + r'[^"\n]*"\s*:\s*)"(?:[^"\\\n]|\\.)*"', re.IGNORECASE)
_AUTH_RE = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_KEYWORD_RE = re.compile(r"pass|secret|token|pwd|api[_-]?key|private[_-]?key|credential")  # on lowered text


def _keyed_line(s: str) -> str:
    s = _QUERY_PW_RE.sub(r"\1" + MASK, s)
    s = _KV_RE.sub(r"\1" + MASK, s)
    return _JSON_KV_RE.sub(r'\1"' + MASK + '"', s)


MIN_SECRET_LEN = 4  # shorter known values are not replaced everywhere (they would wreck the text); patterns still apply


def is_secret_key(key: str) -> bool:
    """A key whose value is a secret: password, password_hash, token, secret, api_key ... but not a ``*_file`` path."""
    return bool(SECRET_KEY_RE.search(key)) and not key.lower().endswith(("_file", "_path", "_dir"))


class Masker:
    """Replaces secrets by ``***``: known values (the pair token, the config's passwords) and secret-shaped text.

    Every pattern works within one line, so any text made of whole lines can be masked in
    one call, however many lines it holds.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        known = sorted({s for s in secrets if len(s) >= MIN_SECRET_LEN}, key=len, reverse=True)
        self.known = tuple(known)
        self._known_re = re.compile("|".join(re.escape(s) for s in known)) if known else None

    @classmethod
    def for_config(cls, cfg: Config) -> Masker:
        """The token, every URL password and every secret-key value of `cfg`."""
        from hasync.alarms.store import url_secrets

        found: list[str] = [cfg.token]

        def walk(obj: Any, key: str = "") -> None:
            if isinstance(obj, dict):
                for k, v in obj.items():
                    walk(v, str(k))
            elif isinstance(obj, (list, tuple)):
                for v in obj:
                    walk(v, key)
            elif isinstance(obj, str):
                if is_secret_key(key):
                    found.append(obj)
                if "://" in obj:
                    found.extend(url_secrets(obj))

        walk(cfg.model_dump(mode="json"))
        return cls(found)

    def text(self, s: str) -> str:
        if self._known_re is not None:
            s = self._known_re.sub(MASK, s)
        if "@" in s and ":" in s:
            s = URL_PASSWORD_RE.sub(r"\1:" + MASK + "@", s)
        if "Bearer" in s or "Basic" in s:
            s = _AUTH_RE.sub(r"\1 " + MASK, s)
        return self._keyed(s)

    @staticmethod
    def _keyed(s: str) -> str:
        """Values after secret-named keys. The case-blind patterns are slow on megabytes of log, so they
        run only on the lines where a case-sensitive search of the lowered text finds a keyword."""
        low = s.lower()
        if len(low) != len(s):  # lowering changed lengths (rare scripts): positions would not match
            return _keyed_line(s)
        out: list[str] = []
        done = 0
        for m in _KEYWORD_RE.finditer(low):
            if m.start() < done:
                continue
            begin = s.rfind("\n", 0, m.start()) + 1
            stop = s.find("\n", m.end())
            stop = len(s) if stop < 0 else stop + 1
            out += (s[done:begin], _keyed_line(s[begin:stop]))
            done = stop
        if not out:
            return s
        out.append(s[done:])
        return "".join(out)

    def json(self, obj: Any, key: str = "") -> Any:
        """A copy of a JSON document with secret-key values and secret text masked."""
        if isinstance(obj, dict):
            return {k: self.json(v, str(k)) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.json(v, key) for v in obj]
        if obj is not None and not isinstance(obj, bool) and is_secret_key(key):
            return MASK
        if isinstance(obj, str):
            return self.text(obj)
        return obj


# -- configs -----------------------------------------------------------------------------------------------------
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


def _toml_key(k: str) -> str:
    return k if _BARE_KEY_RE.fullmatch(k) else _toml_str(k)


def _toml_str(s: str) -> str:
    # JSON escapes are TOML basic-string escapes, except that TOML also forbids a raw DEL.
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, (datetime, date, dtime)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def dump_toml(data: dict[str, Any]) -> str:
    """TOML text for what `tomllib` parsed (round trip: ``tomllib.loads(dump_toml(d)) == d``)."""
    out: list[str] = []

    def table(d: dict[str, Any], path: list[str]) -> None:
        for k, v in d.items():
            if not isinstance(v, dict) and not _is_table_array(v):
                out.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for k, v in d.items():
            sub = [*path, _toml_key(k)]
            if isinstance(v, dict):
                out.append(f"\n[{'.'.join(sub)}]")
                table(v, sub)
            elif _is_table_array(v):
                for item in v:
                    out.append(f"\n[[{'.'.join(sub)}]]")
                    table(item, sub)

    table(data, [])
    return "\n".join(out).lstrip("\n") + "\n"


def masked_config(path: Path, masker: Masker) -> str:
    """The config file at `path` as TOML with secrets masked and comments dropped."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        # Never fall back to the raw text: it is exactly what could not be masked.
        return f"# {path.name}: not included, it cannot be read as TOML now ({type(exc).__name__})\n"
    masked = masker.json(data)
    head = f"# {path.name} as read by hasync collect: secrets replaced by {MASK}, comments left out\n\n"
    return head + dump_toml(masked)


# -- log spools --------------------------------------------------------------------------------------------------
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
        self.file: IO[bytes] = tempfile.TemporaryFile(dir=directory, prefix=".hasync-tmp-")
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


# -- the peer ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClockOffset:
    """The peer's clock minus ours, NTP-style: the peer's time against the midpoint of the request."""

    offset_s: float
    rtt_s: float
    samples: int

    @property
    def applied_s(self) -> float:
        """What the peer's window is shifted by: the offset to the millisecond of the log stamps, or 0 when it
        is within the measurement's uncertainty (then the clocks agree as far as we can tell, and shifting by
        noise would only move the window's edges at random)."""
        return 0.0 if abs(self.offset_s) <= self.rtt_s / 2 else round(self.offset_s, 3)

    def as_json(self) -> dict[str, Any]:
        return {
            "peer_minus_local_s": round(self.offset_s, 4),
            "uncertainty_s": round(self.rtt_s / 2, 4),
            "rtt_s": round(self.rtt_s, 4),
            "samples": self.samples,
            "method": f"GET /v1/collect/info: the peer's time minus the midpoint of the request, "
            f"the sample of lowest round trip of {self.samples}",
            "applied_to_peer_window_s": self.applied_s,
        }


async def measure_offset(peer: AgentClient, samples: int = INFO_SAMPLES) -> tuple[ClockOffset, dict[str, Any]]:
    """The peer's clock offset and its identity (from ``GET /v1/collect/info``)."""
    from hasync.peer.protocol import API

    best: tuple[float, float] | None = None
    info: dict[str, Any] = {}
    for _ in range(samples):
        t0, m0 = time.time(), time.monotonic()
        info = await peer.json("GET", f"{API}/collect/info")
        m1 = time.monotonic()
        rtt = m1 - m0
        offset = float(info["time"]) - (t0 + rtt / 2)
        if best is None or rtt < best[0]:
            best = (rtt, offset)
    assert best is not None
    return ClockOffset(best[1], best[0], samples), info


async def stream_peer_log(
    peer: AgentClient,
    start: datetime,
    end: datetime,
    on_data: Callable[[bytes], None],
    *,
    levels: Iterable[str] = (),
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The peer's HA log entries in [start, end] (its clock), masked, handed to `on_data` piece by piece
    (pieces split anywhere, even inside a character); returns the peer's cut stats. `levels` (e.g.
    ``("ERROR", "WARN")``) keeps only entries of those levels. `logcut.parse_lines` reads the text back."""
    import aiohttp

    from hasync.peer.protocol import API, FRAME_HEADER, MAX_FRAME, unpack

    params = {"start": start.isoformat(), "end": end.isoformat()}
    if levels:
        params["levels"] = ",".join(levels)
    # No total limit (a big window takes time); the peer sends progress at least every second.
    timeout = aiohttp.ClientTimeout(total=None, connect=peer.timeout_s, sock_read=max(30.0, 3 * peer.timeout_s))
    try:
        async with peer.session.get(peer.base_url + f"{API}/collect/logs", params=params, timeout=timeout) as resp:
            await peer.check_response(resp)
            while True:
                kind, n = FRAME_HEADER.unpack(await resp.content.readexactly(FRAME_HEADER.size))
                if n > MAX_FRAME:
                    raise PeerError(f"{peer.name} agent sent a log frame of {n} bytes")
                payload = await resp.content.readexactly(n) if n else b""
                if kind == L_DATA:
                    on_data(payload)
                elif kind == L_PROGRESS:
                    if progress is not None:
                        p = unpack(payload)
                        progress(int(p["read"]), int(p["total"]))
                elif kind == L_DONE:
                    stats: dict[str, Any] = unpack(payload)
                    return stats
                elif kind == L_ERR:
                    raise PeerError(f"{peer.name} agent could not cut its log: {unpack(payload)['message']}")
                else:
                    raise PeerError(f"{peer.name} agent sent an unknown log frame {kind!r}")
    except PeerError:
        raise
    except (TimeoutError, aiohttp.ClientError, asyncio.IncompleteReadError, OSError) as exc:
        raise peer.map_error(exc) from exc


async def fetch_peer_logs(
    peer: AgentClient, window: Window, spool: LogSpool, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Stream the peer's cut of `window` (on its clock) into `spool`; return the peer's cut stats."""
    try:
        return await stream_peer_log(peer, window.start, window.end, spool.feed_bytes, progress=progress)
    finally:
        spool.close_input()


# -- one node's part ---------------------------------------------------------------------------------------------
@dataclass
class NodePart:
    """What the bundle holds of one node, gathered before anything is written."""

    name: str
    local: bool
    window: Window
    hostname: str | None = None
    role: str | None = None
    reachable: bool | None = None
    spool: LogSpool | None = None
    docs: dict[str, bytes] = field(default_factory=dict)  # alarms.json, status.json, config.toml
    log: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    offset: ClockOffset | None = None

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": self.name,
            "hostname": self.hostname,
            "role": self.role,
            "local": self.local,
            "reachable": self.reachable,
            "clock_offset_s": 0.0 if self.local else (None if self.offset is None else self.offset.applied_s),
            "window": self.window.as_json(),
        }
        if self.spool is not None:
            doc["log"] = self.log
        return doc


def _json_bytes(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8")


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


async def _with_progress(work: Awaitable[Any], poll: Callable[[], None]) -> Any:
    """Await `work`, calling `poll` every 0.2 s meanwhile (a progress bar fed from counters)."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.2)
        poll()
        if done:
            return task.result()


async def local_part(cfg: Config, window: Window, spool_dir: Path, masker: Masker, progress: ProgressFn) -> NodePart:
    """This node's logs (cut here), alarms (its store), status (its agent, if running) and masked config."""
    from hasync.roles import node_role

    part = NodePart(cfg.node.name, True, window, hostname=cfg.node.hostname, reachable=True)
    try:
        part.role = node_role(cfg)
    except HasyncError:
        part.role = None
    part.spool = spool = LogSpool(spool_dir, masker)
    stats = CutStats()
    label = f"{cfg.node.name} log"

    def cut() -> None:
        for text in render(iter_window(cfg.node.log_dir, window.start, window.end, stats=stats), masker, part.name):
            spool.feed(text)
        spool.close_input()

    await _with_progress(asyncio.to_thread(cut), lambda: progress(label, stats.bytes_read, stats.bytes_total))
    part.log = cut_json(stats)
    if not stats.files_read and not stats.files_skipped:
        part.notes.append(f"{part.name}: no HA run log in {cfg.node.log_dir}")
    for err in stats.errors:
        part.warnings.append(f"{part.name}: HA log {err}")
    part.docs["alarms.json"] = _json_bytes(masker.json(await _local_alarms(cfg, part)))
    part.docs["status.json"] = _json_bytes(masker.json(await _local_status(cfg, part)))
    part.docs["config.toml"] = (await asyncio.to_thread(masked_config, cfg.path, masker)).encode("utf-8")
    return part


async def _local_alarms(cfg: Config, part: NodePart) -> list[dict[str, Any]]:
    from hasync.alarms.store import SQLITE_FILE, open_store

    if cfg.alarms.store == "sqlite" and not (cfg.node.state_dir / SQLITE_FILE).exists():
        part.notes.append(f"{part.name}: no alarm store yet ({cfg.node.state_dir / SQLITE_FILE})")
        return []
    try:
        store = await asyncio.to_thread(open_store, cfg.alarms.store, cfg.node.state_dir)
        try:
            rows = await asyncio.to_thread(store.history)
        finally:
            await asyncio.to_thread(store.close)
    except HasyncError as exc:
        part.warnings.append(f"{part.name}: alarms not included: {exc.message}")
        return []
    return [a.to_json(diagnosis=True) for a in rows]


async def _local_status(cfg: Config, part: NodePart) -> dict[str, Any]:
    from hasync.peer.client import AgentClient

    async with AgentClient(cfg.local_url(), cfg.token, cfg.peer.timeout_s, name="local") as me:
        try:
            doc: dict[str, Any] = await me.status(timeout=max(30.0, cfg.peer.timeout_s))
            return doc
        except PeerError as exc:
            part.notes.append(f"{part.name}: status from the config only, its agent did not answer: {exc.message}")
    return {
        "node": cfg.node.name,
        "hostname": cfg.node.hostname,
        "role": part.role,
        "peer": cfg.peer.name,
        "agent_running": False,
    }


async def peer_part(cfg: Config, window: Window, spool_dir: Path, masker: Masker, progress: ProgressFn) -> NodePart:
    """The peer's part through its agent; when the peer cannot be reached, a part that says why."""
    from hasync.peer.client import AgentClient
    from hasync.peer.protocol import API

    part = NodePart(cfg.peer.name, False, window, hostname=cfg.peer.hostname)
    async with AgentClient(cfg.peer_url(), cfg.token, cfg.peer.timeout_s, cfg.peer.name) as peer:
        try:
            part.offset, info = await measure_offset(peer)
        except PeerError as exc:
            part.reachable = False
            part.warnings.append(
                f"peer {cfg.peer.name} not collected ({exc.cause.value}): {exc.message}; "
                f"the bundle holds {cfg.node.name} only"
            )
            return part
        part.reachable = True
        part.hostname, part.role = info.get("hostname", part.hostname), info.get("role")
        part.window = window.shifted(part.offset.applied_s)
        part.notes.append(
            f"{part.name}: clock {part.offset.offset_s:+.4f} s from {cfg.node.name}'s "
            f"(±{part.offset.rtt_s / 2:.4f} s), window shifted by {part.offset.applied_s:+.3f} s: its log was cut "
            f"in {iso(part.window.start)} .. {iso(part.window.end)} of its clock"
        )
        part.spool = spool = LogSpool(spool_dir, masker)
        label = f"{part.name} log"
        try:
            stats = await fetch_peer_logs(peer, part.window, spool, lambda d, t: progress(label, d, t))
            part.log = {k: stats.get(k) for k in ("files_read", "files_skipped", "errors", "entries", "lines")}
            part.log["truncated_entries"] = stats.get("truncated_entries", 0)
            for err in stats.get("errors", []):
                part.warnings.append(f"{part.name}: HA log {err}")
        except PeerError as exc:
            part.log = {"error": exc.message}
            part.warnings.append(
                f"{part.name}: HA log incomplete, the stream broke after {spool.size} bytes: {exc.message}"
            )
        for name, fetch in (
            ("alarms.json", lambda: peer.json("GET", f"{API}/alarms?all=1", timeout=max(30.0, peer.timeout_s))),
            ("status.json", lambda: peer.status(timeout=max(30.0, peer.timeout_s))),
        ):
            try:
                part.docs[name] = _json_bytes(masker.json(await fetch()))
            except PeerError as exc:
                part.warnings.append(f"{part.name}: {name} not included: {exc.message}")
        try:
            conf = await peer.json("GET", f"{API}/collect/config")
            part.docs["config.toml"] = masker.text(str(conf["text"])).encode("utf-8")
        except (PeerError, KeyError, TypeError) as exc:
            part.warnings.append(f"{part.name}: config.toml not included: {exc}")
    return part


# -- alarms ------------------------------------------------------------------------------------------------------
async def find_alarm(cfg: Config, fingerprint: str) -> tuple[dict[str, Any], str]:
    """The alarm `fingerprint` names (its active one, else its latest) and the node whose store has it."""
    from hasync.alarms.store import SQLITE_FILE, open_store
    from hasync.peer.client import AgentClient
    from hasync.peer.protocol import API

    if cfg.alarms.store != "sqlite" or (cfg.node.state_dir / SQLITE_FILE).exists():
        store = await asyncio.to_thread(open_store, cfg.alarms.store, cfg.node.state_dir)
        try:
            alarm = await asyncio.to_thread(store.get, fingerprint)
        finally:
            await asyncio.to_thread(store.close)
        if alarm is not None:
            return alarm.to_json(diagnosis=True), cfg.node.name
    async with AgentClient(cfg.peer_url(), cfg.token, cfg.peer.timeout_s, cfg.peer.name) as peer:
        try:
            docs = await peer.json("GET", f"{API}/alarms?all=1")
        except PeerError as exc:
            raise HasyncError(
                f"alarm {fingerprint} is not in {cfg.node.name}'s store and {cfg.peer.name} cannot be asked: "
                f"{exc.message}"
            ) from exc
    mine = [d for d in docs if d.get("fingerprint") == fingerprint]
    if not mine:
        raise UsageError(f"--alarm: no alarm with fingerprint {fingerprint} on {cfg.node.name} or {cfg.peer.name}")
    mine.sort(key=lambda d: (d.get("cleared_at") is None, d["raised_at"]), reverse=True)
    return mine[0], cfg.peer.name


# -- the bundle --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]
    warnings: tuple[str, ...]


def default_name(node: str, at: datetime) -> str:
    return f"hasync-bundle-{node}-{at.astimezone():%Y%m%dT%H%M%S}.tar.gz"


def target_path(output: str | None, node: str, at: datetime) -> Path:
    """Where the bundle goes: `output` as a file, or the default name in `output` (a directory) or the cwd."""
    if output is None:
        return Path.cwd() / default_name(node, at)
    p = Path(output)
    if p.is_dir():
        return p / default_name(node, at)
    if output.endswith("/") or not p.parent.is_dir():
        raise UsageError(f"-o: directory {p if output.endswith('/') else p.parent} does not exist")
    return p


async def collect(
    cfg: Config,
    window: Window,
    target: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    alarm: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
) -> Bundle:
    """Gather both nodes' parts for `window` (this node's clock) and write the bundle to `target` atomically."""
    report: ProgressFn = progress or (lambda what, done, total: None)
    masker = Masker.for_config(cfg)
    spool_dir = target.parent
    results = await asyncio.gather(
        local_part(cfg, window, spool_dir, masker, report),
        peer_part(cfg, window, spool_dir, masker, report),
        return_exceptions=True,
    )
    parts = [r for r in results if isinstance(r, NodePart)]
    try:
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return await asyncio.to_thread(_write, cfg, window, target, parts, max_bytes, alarm, masker, report)
    finally:
        for p in parts:
            if p.spool is not None:
                p.spool.close()


def _write(
    cfg: Config,
    window: Window,
    target: Path,
    parts: list[NodePart],
    max_bytes: int,
    alarm: dict[str, Any] | None,
    masker: Masker,
    report: ProgressFn,
) -> Bundle:
    from hasync.fsutil import fsync_dir, tmp_name

    # Error texts come from elsewhere (the peer, drivers): masked like everything else.
    notes = [masker.text(n) for p in parts for n in p.notes]
    warnings = [masker.text(w) for p in parts for w in p.warnings]
    others = sum(len(b) for p in parts for b in p.docs.values())
    logged = [p for p in parts if p.spool is not None]
    budgets = share([p.spool.size for p in logged if p.spool is not None], max_bytes - others - MANIFEST_ROOM)
    trims: dict[str, Trim] = {}
    guard = {"max_bytes": max_bytes, "dropped_lines": 0, "dropped_entries": 0, "dropped_bytes": 0}
    for p, budget in zip(logged, budgets, strict=True):
        assert p.spool is not None
        t = p.spool.trim(budget, p.name)
        trims[p.name] = t
        p.log.update(entries=p.spool.entries, lines=p.spool.lines, bytes=p.spool.size)
        if t.dropped_bytes:
            p.log.update(
                dropped_lines=t.dropped_lines, dropped_entries=t.dropped_entries, dropped_bytes=t.dropped_bytes
            )
            guard["dropped_lines"] += t.dropped_lines
            guard["dropped_entries"] += t.dropped_entries
            guard["dropped_bytes"] += t.dropped_bytes
            warnings.append(
                f"{p.name}: size guard ({max_bytes} bytes): the {t.dropped_lines} oldest log lines "
                f"({t.dropped_bytes} bytes) left out"
            )
    total = others + sum(t.size for t in trims.values())
    done = 0

    def moved(n: int) -> None:
        nonlocal done
        done += n
        report("bundle", done, total)

    files: list[dict[str, Any]] = []
    tmp = target.parent / tmp_name()
    now = time.time()
    try:
        with open(tmp, "xb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as tar:

                def add(name: str, size: int, src: IO[bytes], digest: Callable[[], str]) -> None:
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = size, int(now), 0o644
                    tar.addfile(info, src)
                    files.append({"path": name, "size": size, "sha256": digest()})

                for p in parts:
                    if p.spool is not None:
                        reader = p.spool.reader(trims[p.name], moved)
                        add(f"{p.name}/ha.log", trims[p.name].size, reader, reader.sha256.hexdigest)  # type: ignore[arg-type]
                    for doc_name in ("alarms.json", "status.json", "config.toml"):
                        if doc_name in p.docs:
                            data = p.docs[doc_name]
                            add(f"{p.name}/{doc_name}", len(data), io.BytesIO(data), hashlib.sha256(data).hexdigest)
                            moved(len(data))
                manifest = {
                    "format": FORMAT_VERSION,
                    "hasync_version": __version__,
                    "created_at": iso(datetime.fromtimestamp(now)),
                    "created_on": cfg.node.name,
                    "window": window.as_json(),
                    "alarm": alarm,
                    "nodes": [p.as_json() for p in parts],
                    "clock_offset": next(
                        (p.offset.as_json() for p in parts if not p.local and p.offset is not None), None
                    ),
                    "size_guard": guard,
                    "files": files,
                    "notes": notes + warnings,
                }
                data = _json_bytes(manifest)
                info = tarfile.TarInfo("manifest.json")
                info.size, info.mtime, info.mode = len(data), int(now), 0o644
                tar.addfile(info, io.BytesIO(data))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return Bundle(target, manifest, tuple(warnings))
