"""Partial transfers: the temp file of a big file outlives an interrupted transfer and is resumed.

rsync's `--partial --append-verify`, per file. When the standby starts to receive
a file of at least `RESUME_MIN` bytes it records, in `<state_dir>/partials/`, which
temp file holds which path. If the transfer is cut (the standby killed, the link
or the active gone), the temp file stays. The next
request for that path carries the temp file's length N and the BLAKE3 of those N
bytes; the active compares them with the first N bytes of its file and, when they
match, sends only the rest (F_HEAD says from which offset). Anything else (a
different prefix, a file that shrank, a record without its temp file, a temp file
without a record) falls back to a whole transfer, and leftovers are removed. The
file only becomes visible after its whole digest matched, as always.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import blake3
import msgpack

from hasync.errors import PathRefused
from hasync.fsutil import DirFds, atomic_write, is_tmp_name, validate_relpath
from hasync.manifest import hash_into
from hasync.replication.apply import FileWriter, Resume

RESUME_MIN = 8 << 20  # smaller files are sent again whole: a resume would save too little
log = logging.getLogger("hasync.standby")


@dataclass(frozen=True)
class Partial:
    """The temp file `tmp` (a name in `rel`'s directory) holds the first bytes of `rel`."""

    dir: str
    rel: str
    tmp: str

    @property
    def tmp_rel(self) -> str:
        parent = self.rel.rpartition("/")[0]
        return f"{parent}/{self.tmp}" if parent else self.tmp


class Partials:
    """The records of partial transfers, one small file each (written atomically)."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "partials"

    def _path(self, dir_name: str, rel: str) -> Path:
        return self.dir / blake3.blake3(os.fsencode(f"{dir_name}\0{rel}")).hexdigest(16)

    def record(self, p: Partial) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        doc = [p.dir, p.rel, p.tmp]
        # Not fsynced: a record lost in a power cut only costs a whole transfer.
        atomic_write(
            self._path(p.dir, p.rel),
            msgpack.packb(doc, use_bin_type=True, unicode_errors="surrogateescape"),
            durable=False,
        )

    def get(self, dir_name: str, rel: str) -> Partial | None:
        return self._load(self._path(dir_name, rel))

    def drop(self, dir_name: str, rel: str) -> None:
        self._path(dir_name, rel).unlink(missing_ok=True)

    def all(self) -> list[Partial]:
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            p = self._load(self.dir / name)
            if p is not None:
                out.append(p)
            elif not is_tmp_name(name):
                (self.dir / name).unlink(missing_ok=True)  # damaged: only costs a whole transfer
        return out

    @staticmethod
    def _load(path: Path) -> Partial | None:
        try:
            d, rel, tmp = msgpack.unpackb(path.read_bytes(), raw=False, unicode_errors="surrogateescape")
            p = Partial(str(d), str(rel), str(tmp))
        except (OSError, ValueError, TypeError, msgpack.UnpackException):
            return None
        try:
            validate_relpath(p.rel)  # a record is read from disk: its path obeys the same rules as the peer's
        except PathRefused:
            return None
        return p if is_tmp_name(p.tmp) and "/" not in p.tmp else None


def prefix_hash(dir_fd: int, name: str) -> tuple[int, blake3.blake3] | None:
    """Length and BLAKE3 hasher of the temp file `name` in `dir_fd` (None when it cannot be read)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        h = blake3.blake3()
        return hash_into(fd, h), h
    except OSError:
        return None
    finally:
        os.close(fd)


class PartialTransfers:
    """The standby's partial transfers: what to offer the active, and the records' upkeep."""

    def __init__(self, state_dir: Path) -> None:
        self.store = Partials(state_dir)
        self.index: dict[tuple[str, str], Partial] = {}

    def load(self, dir_names: set[str]) -> None:
        """Read the records; those of sync dirs no longer configured are dropped."""
        self.index = {}
        for p in self.store.all():
            if p.dir in dir_names:
                self.index[(p.dir, p.rel)] = p
            else:
                self.store.drop(p.dir, p.rel)

    def keep_temps(self, dir_name: str, root: Path, temps: list[str]) -> tuple[list[str], int]:
        """Of the temp files a scan of `root` found, those no record holds (to remove), and how many
        partial transfers are kept to resume. Records whose temp file is gone are dropped."""
        found = set(temps)
        kept = 0
        for (d, rel), p in list(self.index.items()):
            if d != dir_name:
                continue
            if str(root / p.tmp_rel) in found:
                found.discard(str(root / p.tmp_rel))
                kept += 1
            else:
                self.drop(d, rel)
        return sorted(found), kept

    def holds(self, dir_name: str, rel: str) -> bool:
        return (dir_name, rel) in self.index

    def offers(self, dir_name: str, dir_fd: Callable[[str], int], paths: list[str]) -> dict[str, Resume]:
        """For the paths with a partial temp file: its length and the hasher of its bytes (blocking:
        reads the partial files). A partial that cannot be read is discarded."""
        out: dict[str, Resume] = {}
        for rel in paths:
            p = self.index.get((dir_name, rel))
            if p is None:
                continue
            try:
                got = prefix_hash(dir_fd(rel.rpartition("/")[0]), p.tmp)
            except (OSError, PathRefused):
                got = None
            if got is None or got[0] == 0:
                self.discard(dir_name, rel, dir_fd)
                continue
            out[rel] = Resume(p.tmp, got[0], got[1])
        return out

    def started(self, dir_name: str, writer: FileWriter) -> None:
        """Record a new transfer of a big file, so that its temp file survives an interruption."""
        if writer.start == 0 and writer.meta.size >= RESUME_MIN:
            p = Partial(dir_name, writer.rel, writer.tmp)
            try:
                self.store.record(p)
            except OSError as exc:  # no resume then, nothing worse
                log.warning("cannot record a partial transfer path=%s error=%s", writer.rel, exc.strerror)
                return
            self.index[(dir_name, writer.rel)] = p

    def drop(self, dir_name: str, rel: str) -> None:
        if self.index.pop((dir_name, rel), None) is not None:
            self.store.drop(dir_name, rel)

    def discard(self, dir_name: str, rel: str, dir_fd: Callable[[str], int]) -> None:
        """Remove a partial temp file and its record (the active's file is not what it holds)."""
        p = self.index.get((dir_name, rel))
        if p is None:
            return
        try:
            os.unlink(p.tmp, dir_fd=dir_fd(rel.rpartition("/")[0]))
        except (OSError, PathRefused):
            pass
        self.drop(dir_name, rel)

    def discard_rest(self, dirs: dict[str, Path]) -> int:
        """After a whole reconcile: the partials it did not resume are of no use (their file is gone
        from the active, or already whole here); remove them. Returns how many."""
        n = 0
        for d, rel in [k for k in self.index if k[0] in dirs]:
            try:
                with DirFds(dirs[d]) as fds:
                    self.discard(d, rel, fds.get)
            except (OSError, PathRefused):
                self.drop(d, rel)
            n += 1
        return n
