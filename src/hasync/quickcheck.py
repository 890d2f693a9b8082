"""The quick check: has the standby's copy changed since its hash cache was saved?

git's index trick, applied per directory. Beside each hash cache the standby
keeps a small index: the tree's Merkle root, and for each directory one
signature over its entries' name, type, mode, size, mtime, ctime, inode, owner
and link target. `hasync sync --once` without an agent re-stats every path, as
rsync does, but builds no entry, reads no cache of 100,000 rows and hashes no
record: when every signature matches, the copy is the tree the root describes,
and one comparison with the active's root says whether anything is to do.
Anything else (a signature that differs, a temp file left by a crash, a
directory that cannot be listed, an index that is missing or damaged) falls
back to the full scan, which is always right.

A signature only trusts what the hash cache trusts: a file whose digest the
cache does not trust by inode (modified too recently, or unreadable) leaves its
directory without a signature. The stat pass runs in forked workers (one per
CPU, at most 4, each a share of the directories by entry count) while this
process asks the active for its roots.
"""

from __future__ import annotations

import multiprocessing
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import blake3
import msgpack

from hasync.fsutil import TMP_PREFIX, atomic_write
from hasync.manifest import DIR, FILE, LINK, Entry, Excluder, Tree

VERSION = 2  # 2: a file's row has its ctime (manifest.trusted)
_IFMT = 0o170000
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
Row = tuple[Any, ...]


def entry_row(name: str, e: Entry) -> Row | None:
    """The signature row of a tree entry; None when the entry is not trusted by its stat alone."""
    if e.kind == FILE:
        return (name, FILE, e.mode, e.size, e.mtime_ns, e.ino, e.uid, e.gid, e.ctime_ns) if e.ino else None
    if e.kind == DIR:
        return (name, DIR, e.mode, 0, 0, e.ino, e.uid, e.gid) if e.ino else None
    if e.kind == LINK:
        # A link's mtime is when it was made here, not the active's: the target is compared instead.
        return (name, LINK, e.mode, e.size, 0, 0, e.uid, e.gid, e.link)
    return None  # an unreadable path: only the full scan knows whether it still is


def signature(rows: list[Row]) -> bytes:
    rows.sort()
    # Names that are not UTF-8 (str with surrogateescape here) are packed as their exact bytes.
    return blake3.blake3(msgpack.packb(rows, use_bin_type=True, unicode_errors="surrogateescape")).digest(16)


@dataclass(frozen=True)
class QuickIndex:
    """One sync dir's index: its tree's root (and owner mode), and each directory's signature."""

    with_owner: bool
    root: bytes
    dirs: list[tuple[str, bytes | None, int]]  # (reldir, signature or None, entry count)

    @classmethod
    def of(cls, tree: Tree) -> QuickIndex:
        dirs: list[tuple[str, bytes | None, int]] = []
        for reldir, kids in list(tree.dirs.items()):
            rows = [entry_row(name, e) for name, e in list(kids.items())]
            trusted = [r for r in rows if r is not None]
            sig = signature(trusted) if len(trusted) == len(rows) else None
            dirs.append((reldir, sig, len(rows)))
        return cls(tree.with_owner, tree.root_hash(), dirs)

    @property
    def complete(self) -> bool:
        return all(sig is not None for _, sig, _ in self.dirs)

    def save(self, path: Path) -> None:
        doc = {"v": VERSION, "with_owner": self.with_owner, "root": self.root, "dirs": self.dirs}
        atomic_write(path, msgpack.packb(doc, use_bin_type=True, unicode_errors="surrogateescape"))

    @classmethod
    def load(cls, path: Path) -> QuickIndex | None:
        """The saved index, or None when there is none or it cannot be used."""
        try:
            doc = msgpack.unpackb(path.read_bytes(), raw=False, use_list=True, unicode_errors="surrogateescape")
            if doc.get("v") != VERSION:
                return None
            dirs = [(str(d), None if s is None else bytes(s), int(n)) for d, s, n in doc["dirs"]]
            return cls(bool(doc["with_owner"]), bytes(doc["root"]), dirs)
        except (OSError, ValueError, KeyError, TypeError, msgpack.UnpackException):
            return None


def index_path(cache_path: Path) -> Path:
    return cache_path.with_suffix(".quick")


def listing_rows(root: str, reldir: str, exclude: Excluder) -> list[Row] | None:
    """The signature rows of one directory as it is on disk; None when the full scan must look.

    The hot loop of the quick check: names from the directory's fd, and fstatat() on
    that fd (no path walk per file), one tuple per entry.
    """
    rows: list[Row] = []
    filtering = exclude.active
    prefix = TMP_PREFIX
    try:
        fd = os.open(os.path.join(root, reldir) if reldir else root, _DIR_FLAGS)
    except OSError:
        return None
    try:
        for name in os.listdir(fd):
            if name.startswith(prefix):
                return None  # a crash's leftover: the full scan removes it
            if filtering and exclude(f"{reldir}/{name}" if reldir else name, name):
                continue
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            m = st.st_mode
            kind = m & _IFMT
            if kind == stat.S_IFREG:
                rows.append(
                    (
                        name,
                        FILE,
                        m & 0o7777,
                        st.st_size,
                        st.st_mtime_ns,
                        st.st_ino,
                        st.st_uid,
                        st.st_gid,
                        st.st_ctime_ns,
                    )
                )
            elif kind == stat.S_IFDIR:
                rows.append((name, DIR, m & 0o7777, 0, 0, st.st_ino, st.st_uid, st.st_gid))
            elif kind == stat.S_IFLNK:
                link = os.readlink(name, dir_fd=fd)
                rows.append((name, LINK, m & 0o7777, st.st_size, 0, 0, st.st_uid, st.st_gid, link))
    except OSError:
        return None
    finally:
        os.close(fd)
    return rows


def unchanged(root: str, dirs: Iterable[tuple[str, bytes | None]], exclude: Excluder) -> bool:
    """Whether every directory in `dirs` still has its signature (stops at the first that does not)."""
    for reldir, sig in dirs:
        rows = listing_rows(root, reldir, exclude)
        if sig is None or rows is None or signature(rows) != sig:
            return False
    return True


Work = list[tuple[str, list[tuple[str, bytes | None]]]]  # (sync dir root, [(reldir, signature)])


def _split(indexes: dict[str, tuple[Path, QuickIndex]], shares: int) -> list[Work]:
    """Split the directories into `shares` parts of about the same number of entries."""
    total = sum(n for _, idx in indexes.values() for _, _, n in idx.dirs) or 1
    parts: list[Work] = [[] for _ in range(shares)]
    seen = 0
    for path, idx in indexes.values():
        mine: list[list[tuple[str, bytes | None]]] = [[] for _ in range(shares)]
        for reldir, sig, n in idx.dirs:
            mine[min(shares - 1, seen * shares // total)].append((reldir, sig))
            seen += n
        for part, dirs in zip(parts, mine, strict=True):
            if dirs:
                part.append((str(path), dirs))
    return parts


def _run(work: Work, exclude: Excluder) -> bool:
    return all(unchanged(root, dirs, exclude) for root, dirs in work)


def _worker(conn: Connection, work: Work, exclude: Excluder) -> None:
    try:
        conn.send(_run(work, exclude))
    except BaseException:  # the parent then takes the full scan
        conn.send(False)
    finally:
        conn.close()


class QuickCheck:
    """The quick check of a standby's sync dirs, run by forked workers while this process goes on.

    `start()` must be called while the process has a single thread (before the event
    loop starts its worker threads): the workers are forked. `finish()` waits for them
    and returns whether every sync dir is unchanged since its index.
    """

    def __init__(self, indexes: dict[str, tuple[Path, QuickIndex]], exclude: Excluder, workers: int = 0) -> None:
        self.indexes = indexes
        self.exclude = exclude
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self._parts = _split(indexes, self.workers)
        self._running: list[tuple[Any, Connection]] = []
        self._left: Work = [w for part in self._parts for w in part]  # what finish() does here

    @classmethod
    def prepare(cls, dirs: dict[str, tuple[Path, Path]], exclude: Excluder) -> QuickCheck | None:
        """A check for these sync dirs ({name: (path, cache path)}), or None when one has no usable index."""
        indexes: dict[str, tuple[Path, QuickIndex]] = {}
        for name, (path, cache) in dirs.items():
            idx = QuickIndex.load(index_path(cache))
            if idx is None or not idx.complete:
                return None
            indexes[name] = (path, idx)
        return cls(indexes, exclude) if indexes else None

    def start(self) -> None:
        ctx = multiprocessing.get_context("fork")
        self._left = []
        for part in self._parts:
            parent, child = ctx.Pipe(duplex=False)
            try:
                proc = ctx.Process(target=_worker, args=(child, part, self.exclude), daemon=True)
                proc.start()
            except OSError:  # no process to spare
                parent.close()
                self._left.extend(part)
                continue
            finally:
                child.close()
            self._running.append((proc, parent))

    def finish(self) -> bool:
        ok = _run(self._left, self.exclude)
        for proc, conn in self._running:
            try:
                ok = bool(conn.recv()) and ok
            except (EOFError, OSError):
                ok = False
            conn.close()
            proc.join()
        self._running.clear()
        return ok

    def roots(self) -> dict[str, tuple[bytes, bool]]:
        """Each sync dir's root hash and owner mode, as of its index."""
        return {name: (idx.root, idx.with_owner) for name, (_, idx) in self.indexes.items()}
