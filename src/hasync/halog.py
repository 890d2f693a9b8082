"""The HA run log (SPEC §8): one line per event, size-rotated to gzip files."""

from __future__ import annotations

import gzip
import logging
import logging.handlers
import os
import re
import shutil
import sys
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Generic, TypeVar

from hasync import clock
from hasync.fsutil import atomic_file

LOG_NAME = "ha.log"
ROTATED_RE = re.compile(r"ha\.log\.(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})(?:-\d+)?\.gz")
LEVELS = {"WARNING": "WARN", "CRITICAL": "ERROR"}


def utc_offset() -> str:
    off = time.strftime("%z", time.localtime())
    return f"{off[:3]}:{off[3:]}"


def kv(**fields: Any) -> str:
    """Render key=value pairs for a log line; values with spaces are quoted."""
    out = []
    for k, v in fields.items():
        s = str(v)
        if not s or any(c.isspace() for c in s) or '"' in s:
            s = '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        out.append(f"{k}={s}")
    return " ".join(out)


def clip(value: str, limit: int = 200) -> str:
    """`value` for a log line: at most `limit` characters, saying how many were left out."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}...(+{len(value) - limit} chars)"


K = TypeVar("K", bound=Hashable)


class Throttle(Generic[K]):
    """One log line per key and interval: the first event in full, then a count of the rest.

    `hit` says whether to log an event; `due` hands out, once a key's interval has passed, how
    many events it held back (then a new interval starts, or the key is forgotten when quiet).
    At most `max_keys` keys are tracked: past that, new keys share the key `overflow`.
    """

    def __init__(self, interval_s: float, overflow: K, max_keys: int = 1024) -> None:
        self.interval_s = interval_s
        self.max_keys = max_keys
        self.overflow = overflow
        self._keys: dict[K, list[float]] = {}  # key -> [interval start, events held back]

    def key(self, key: K) -> K:
        """`key`, or the shared overflow key when too many are tracked."""
        return key if key in self._keys or len(self._keys) < self.max_keys else self.overflow

    def hit(self, key: K, now: float) -> bool:
        """Count an event; True: log it in full (the first of its key in this interval)."""
        state = self._keys.get(key)
        if state is None:
            self._keys[key] = [now, 0]
            return True
        state[1] += 1
        return False

    def next_due(self) -> float | None:
        """When the earliest interval with held-back events ends."""
        starts = [start for start, held in self._keys.values() if held]
        return min(starts) + self.interval_s if starts else None

    def due(self, now: float) -> list[tuple[K, int, float]]:
        """(key, events held back, seconds they span) of every interval that has ended."""
        out: list[tuple[K, int, float]] = []
        for key, state in list(self._keys.items()):
            start, held = state
            if now - start < self.interval_s:
                continue
            if held:
                out.append((key, int(held), now - start))
                self._keys[key] = [now, 0]
            else:
                del self._keys[key]
        return out


class HaFormatter(logging.Formatter):
    """``YYYY-MM-DD HH:MM:SS,mmm LEVEL [component] message key=value ...`` in local time."""

    def __init__(self) -> None:
        super().__init__(datefmt="%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        created = record.created + clock.OFFSET_S  # the test-only skew of clock.py, else 0
        stamp = time.strftime(self.datefmt or "%Y-%m-%d %H:%M:%S", time.localtime(created))
        when = f"{stamp},{int(created * 1000) % 1000:03d}"
        level = LEVELS.get(record.levelname, record.levelname)
        component = record.name.rpartition(".")[2]
        line = f"{when} {level} [{component}] {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class HaLogHandler(logging.handlers.RotatingFileHandler):
    """Rotates ``ha.log`` by size to ``ha.log.YYYY-MM-DD_HH-MM-SS.gz``, keeping `backup_count` files."""

    def __init__(self, log_dir: Path, max_bytes: int, backup_count: int) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir
        super().__init__(
            log_dir / LOG_NAME,
            maxBytes=max_bytes,
            backupCount=backup_count,
            encoding="utf-8",
            errors="backslashreplace",
        )
        self.setFormatter(HaFormatter())

    def _open(self) -> Any:
        stream = super()._open()
        if stream.tell() == 0:
            stream.write(f"# hasync HA run log; times are local, UTC offset {utc_offset()}\n")
            stream.flush()
        return stream

    def doRollover(self) -> None:
        if self.stream:
            self.stream.close()
            self.stream = None
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime())
        target = self.log_dir / f"{LOG_NAME}.{stamp}.gz"
        n = 0
        while target.exists():
            n += 1
            target = self.log_dir / f"{LOG_NAME}.{stamp}-{n}.gz"
        src = Path(self.baseFilename)
        if src.exists():
            # `filename` names the member in the gzip header as gzip(1) would, not after the temp file.
            with (
                open(src, "rb") as fin,
                atomic_file(target) as f,
                gzip.GzipFile(filename=target.name, mode="wb", fileobj=f) as fout,
            ):
                shutil.copyfileobj(fin, fout)
            src.unlink()
        rotated = rotated_logs(self.log_dir)
        for old in rotated[: max(0, len(rotated) - self.backupCount)]:
            old.unlink(missing_ok=True)
        self.stream = self._open()


def rotated_logs(log_dir: Path) -> list[Path]:
    """Rotated logs, oldest first."""
    try:
        names = [n for n in os.listdir(log_dir) if ROTATED_RE.fullmatch(n)]
    except FileNotFoundError:
        return []

    def order(name: str) -> tuple[str, int]:
        # A second rotation within one second is "-1": it comes after the first, not before.
        m = ROTATED_RE.fullmatch(name)
        assert m is not None
        suffix = name[len("ha.log.") + len(m.group(1)) :].removesuffix(".gz")
        return m.group(1), int(suffix[1:]) if suffix else 0

    return [log_dir / n for n in sorted(names, key=order)]


def setup(log_dir: Path, max_bytes: int, backup_count: int, level: str = "INFO", stderr: bool = True) -> None:
    """Route the ``hasync`` loggers to the HA run log (and to stderr for a foreground agent)."""
    root = logging.getLogger("hasync")
    root.setLevel(logging.DEBUG if level == "DEBUG" else getattr(logging, {"WARN": "WARNING"}.get(level, level)))
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    root.addHandler(HaLogHandler(log_dir, max_bytes, backup_count))
    if stderr:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(HaFormatter())
        root.addHandler(console)
    root.propagate = False
