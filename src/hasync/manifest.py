"""Manifests: scan a sync dir into entries, cache hashes, keep Merkle dir hashes, diff two trees."""

from __future__ import annotations

import enum
import errno
import fcntl
import fnmatch
import os
import re
import signal
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NamedTuple

import blake3

from hasync.errors import Cause, ScanError, unreadable_cause
from hasync.fsutil import is_tmp_name

CHUNK = 1 << 20
# The racy window (git's "racy clean" rule, on the ctime, which nobody can set back): a file whose
# ctime is this close to when we looked at it may change again within the same timestamp tick, and
# a write already in progress when the read began has set its times before its bytes are all there.
# Its digest is not trusted from the cache, and a read of it counts only when a second read agrees.
RACY_NS = 2_000_000_000


class Kind(enum.StrEnum):
    """What an entry is. The values are on the wire, in the hash cache and in the Merkle records."""

    FILE = "f"
    DIR = "d"
    LINK = "l"
    ERROR = "e"  # a path the scanner could not read: the entry carries its ScanError


FILE, DIR, LINK, ERROR = Kind.FILE, Kind.DIR, Kind.LINK, Kind.ERROR
KIND_OF = {k.value: k for k in Kind}


class Entry(NamedTuple):
    """One path of a sync dir. `digest` is the BLAKE3 of a file's content."""

    kind: Kind
    mode: int
    size: int = 0
    mtime_ns: int = 0
    digest: bytes = b""
    link: str = ""
    uid: int = 0
    gid: int = 0
    ino: int = 0  # local cache key only; 0 = do not trust the cached digest
    error: ScanError | None = None  # kind ERROR: why it could not be read
    dev: int = 0  # directories: with `ino`, the directory's identity (a swap by rename is a change); local only
    ctime_ns: int = 0  # local cache key only (with ino, size, mtime): a write always changes it

    @property
    def cause(self) -> Cause | None:
        return None if self.error is None else self.error.cause


ERROR_FIELD = 1 + Entry._fields.index("error")  # in a hash cache row: [relpath, *entry]


def same(a: Entry | None, b: Entry | None, with_owner: bool) -> bool:
    """Whether two entries are equal in the sense of the spec (content, type, mode[, owner])."""
    if a is None or b is None:
        return a is b
    if a.kind != b.kind or a.mode != b.mode:
        return False
    if with_owner and (a.uid != b.uid or a.gid != b.gid):
        return False
    if a.kind == FILE:
        return a.digest == b.digest
    if a.kind == LINK:
        return a.link == b.link
    if a.kind == ERROR:
        return a.error == b.error
    return True


def _record(name: str, e: Entry, with_owner: bool) -> bytes:
    parts = [os.fsencode(name), e.kind.encode(), b"%o" % e.mode]
    if e.kind == FILE:
        parts.append(e.digest)
    elif e.kind == LINK:
        parts.append(os.fsencode(e.link))
    elif e.kind == ERROR:
        parts.append(str(e.error).encode())
    if with_owner:
        parts.append(b"%d:%d" % (e.uid, e.gid))
    return b"\0".join(parts)


class Excluder:
    """rsync-like globs: a pattern without '/' matches a name at any depth; a
    pattern with a '/' (a leading one anchors it) matches the path from the
    sync dir's root."""

    def __init__(self, patterns: Iterable[str]) -> None:
        anchored = [p for p in patterns if "/" in p.rstrip("/")]
        names = [p.rstrip("/") for p in patterns if p not in anchored]
        paths = [p.strip("/") for p in anchored]
        self._name = re.compile("|".join(fnmatch.translate(p) for p in names)) if names else None
        self._path = re.compile("|".join(fnmatch.translate(p) for p in paths)) if paths else None
        self.active = self._name is not None or self._path is not None

    def __call__(self, relpath: str, name: str) -> bool:
        if self._name is not None and self._name.match(name):
            return True
        return self._path is not None and self._path.match(relpath) is not None


def cache_path(state_dir: Path, dir_name: str) -> Path:
    """Where a sync dir's tree is persisted (the hash cache)."""
    return state_dir / "manifests" / f"{dir_name}.msgpack"


class FileChanged(Exception):
    """The file changed while it was read; read it again later."""


def hash_into(fd: int, h: blake3.blake3) -> int:
    """Feed the rest of an open file to `h`; return how many bytes that was."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    while True:
        n = os.readv(fd, [buf])
        if not n:
            return total
        h.update(view[:n])
        total += n


def stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    """What must stay the same for a file's content to be the same: ctime, which userspace cannot set,
    changes with every write (and every utime that puts an mtime back)."""
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def settled(st: os.stat_result, since_ns: int) -> bool:
    """Whether the file's last change is older than the racy window before `since_ns` (when the read
    began): then no write was in progress during the read that the stat before and after cannot see."""
    return since_ns - st.st_ctime_ns > RACY_NS


def trusted(prev: Entry | None, st: os.stat_result) -> bool:
    """Whether a cached entry's digest still describes the file that `st` describes."""
    return (
        prev is not None
        and prev.kind == FILE
        and prev.ino != 0
        and (prev.ino, prev.size, prev.mtime_ns, prev.ctime_ns) == stat_key(st)
    )


def open_for_writing(fd: int) -> bool | None:
    """Whether any process has the file open for writing: Linux grants a read lease (F_SETLEASE) only
    when none has. None when this process may not take a lease on it (neither its owner nor CAP_LEASE,
    or a file system without leases). The lease is let go at once; a writer that opens the file in that
    instant breaks it with SIGURG, which is ignored (SIGIO, the default, would end the process)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        return True if exc.errno in (errno.EAGAIN, errno.EBUSY) else None
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return False


def confirm_read(fd: int, digest: bytes, before: os.stat_result, started_ns: int) -> os.stat_result:
    """Prove that `digest`, just read from `fd` (whose stat was `before` when the read began at
    `started_ns`), is of one whole version of the file, or raise FileChanged (read it again later).

    A write sets the file's times when it starts, before its bytes are all there, and a writer can be
    preempted in the middle: so an unchanged stat proves nothing for a file changed within the racy
    window. Such a file counts only when nobody has it open for writing now (any write in progress
    during the first read is over) and a second read agrees; when that cannot be known (no lease
    allowed), the second read agreeing is all there is. A file open for writing waits until it settles.
    """
    after = os.fstat(fd)
    if stat_key(before) != stat_key(after):
        raise FileChanged()
    if settled(after, started_ns):
        return after
    if open_for_writing(fd):
        raise FileChanged()
    os.lseek(fd, 0, os.SEEK_SET)
    h = blake3.blake3()
    hash_into(fd, h)
    if h.digest() != digest or stat_key(os.fstat(fd)) != stat_key(after):
        raise FileChanged()
    return after


def hash_fd(fd: int) -> tuple[bytes, os.stat_result]:
    """BLAKE3 of an open file, refusing (FileChanged) a result that may be torn (see confirm_read)."""
    started = time.time_ns()
    before = os.fstat(fd)
    h = blake3.blake3()
    hash_into(fd, h)
    digest = h.digest()
    return digest, confirm_read(fd, digest, before, started)


def error_entry(name: str, st: os.stat_result, exc: OSError) -> Entry:
    """An entry for a path the scanner could not read, with the spec's cause."""
    return Entry(
        ERROR,
        stat.S_IMODE(st.st_mode),
        st.st_size,
        st.st_mtime_ns,
        uid=st.st_uid,
        gid=st.st_gid,
        error=ScanError(unreadable_cause(name, st, exc), exc.strerror or str(exc)),
    )


def dir_entry(st: os.stat_result) -> Entry:
    """A directory's entry, with its identity (inode, device)."""
    return Entry(DIR, stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid, ino=st.st_ino, dev=st.st_dev)


def same_dir(e: Entry | None, st: os.stat_result) -> bool:
    """Whether directory entry `e` is the directory `st` describes (not another one renamed into its place)."""
    return e is not None and e.kind == DIR and e.ino != 0 and e.ino == st.st_ino and (e.dev == 0 or e.dev == st.st_dev)


def stat_entry(
    name: str,
    st: os.stat_result,
    read: Callable[[], tuple[bytes, os.stat_result]] | None,
    link: Callable[[], str],
    prev: Entry | None,
    now_ns: int,
) -> Entry | None:
    """Build the entry for one stat result; hash files only when the cache (`prev`) can be `trusted`.
    Pass no `prev` to read the file whatever the cache says (after an event on the path)."""
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        return dir_entry(st)
    if stat.S_ISLNK(st.st_mode):
        return Entry(LINK, mode, st.st_size, st.st_mtime_ns, link=link(), uid=st.st_uid, gid=st.st_gid)
    if not stat.S_ISREG(st.st_mode):
        return None  # fifos, sockets and devices are not synchronized
    if trusted(prev, st):
        assert prev is not None
        digest = prev.digest
    else:
        assert read is not None
        digest, st = read()
    ino = st.st_ino if settled(st, now_ns) else 0
    return Entry(
        FILE, mode, st.st_size, st.st_mtime_ns, digest, uid=st.st_uid, gid=st.st_gid, ino=ino, ctime_ns=st.st_ctime_ns
    )


def read_file_entry(dir_fd: int | None, path: str) -> tuple[bytes, os.stat_result]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return hash_fd(fd)
    finally:
        os.close(fd)


@dataclass
class Tree:
    """All entries of one sync dir, by directory, with lazily computed Merkle hashes.

    `dirs` maps a directory's relative path ('' is the root) to its children by
    name. A directory's hash covers its children's records and, recursively,
    their hashes, so equal root hashes mean equal trees.
    """

    with_owner: bool = False
    dirs: dict[str, dict[str, Entry]] = field(default_factory=lambda: {"": {}})
    _hashes: dict[str, bytes] = field(default_factory=dict, repr=False)
    # Set by scan(): our temp files it passed over, and whether it differs from the tree it reused.
    temps: list[str] = field(default_factory=list, repr=False, compare=False)
    busy: list[str] = field(default_factory=list, repr=False, compare=False)  # being written: left unhashed
    error_paths: set[str] = field(default_factory=set, repr=False, compare=False)
    changed: bool = field(default=True, repr=False, compare=False)
    # The root directory's identity (device, inode) when scanned: a root replaced by rename is a new tree.
    root_id: tuple[int, int] = field(default=(0, 0), repr=False, compare=False)
    # Regular files with more than one name, by (device, inode): an event on one name refreshes them all.
    links: dict[tuple[int, int], set[str]] = field(default_factory=dict, repr=False, compare=False)

    # -- access ------------------------------------------------------------
    def get(self, relpath: str) -> Entry | None:
        parent, _, name = relpath.rpartition("/")
        kids = self.dirs.get(parent)
        return kids.get(name) if kids is not None else None

    def children(self, reldir: str) -> dict[str, Entry]:
        return self.dirs.get(reldir, {})

    def __len__(self) -> int:
        return sum(len(k) for k in self.dirs.values())

    def items(self, top: str = "") -> Iterator[tuple[str, Entry]]:
        """Every (relpath, entry) below directory `top`, parents before children."""
        stack = [top]
        while stack:
            d = stack.pop()
            for name, e in sorted(self.dirs.get(d, {}).items()):
                rel = f"{d}/{name}" if d else name
                yield rel, e
                if e.kind == DIR:
                    stack.append(rel)

    def errors(self) -> list[tuple[str, Entry]]:
        """The ERROR entries (paths that could not be read), kept as an index: no walk of the tree."""
        out = []
        for p in sorted(self.error_paths):
            e = self.get(p)
            if e is not None and e.kind == ERROR:
                out.append((p, e))
        return out

    # -- mutation ----------------------------------------------------------
    def _dirty(self, reldir: str) -> None:
        # An uncached dir has uncached ancestors, so the walk up can stop there.
        while self._hashes.pop(reldir, None) is not None and reldir:
            reldir = reldir.rpartition("/")[0]

    def put(self, relpath: str, entry: Entry) -> None:
        parent, _, name = relpath.rpartition("/")
        old = self.dirs.setdefault(parent, {}).get(name)
        if old is not None and old.kind == DIR and entry.kind != DIR:
            self._drop_subtree(relpath)
        self.dirs[parent][name] = entry
        if entry.kind == ERROR:
            self.error_paths.add(relpath)
        else:
            self.error_paths.discard(relpath)
        if entry.kind == DIR:
            self.dirs.setdefault(relpath, {})
        self._dirty(parent)
        if entry.kind == DIR:
            self._hashes.pop(relpath, None)

    def remove(self, relpath: str) -> Entry | None:
        parent, _, name = relpath.rpartition("/")
        kids = self.dirs.get(parent)
        if kids is None or name not in kids:
            return None
        old = kids.pop(name)
        self.error_paths.discard(relpath)
        if old.kind == DIR:
            self._drop_subtree(relpath)
        self._dirty(parent)
        return old

    def _drop_subtree(self, reldir: str) -> None:
        prefix = reldir + "/"
        if self.error_paths:
            self.error_paths -= {p for p in self.error_paths if p.startswith(prefix)}
        for d in [d for d in self.dirs if d == reldir or d.startswith(prefix)]:
            del self.dirs[d]
            self._hashes.pop(d, None)

    def set_with_owner(self, with_owner: bool) -> None:
        if with_owner != self.with_owner:
            self.with_owner = with_owner
            self._hashes.clear()

    # -- Merkle hashes -----------------------------------------------------
    def dir_hash(self, reldir: str = "") -> bytes:
        cached = self._hashes.get(reldir)
        if cached is not None:
            return cached
        h = blake3.blake3()
        for name in sorted(self.dirs.get(reldir, {})):
            e = self.dirs[reldir][name]
            h.update(_record(name, e, self.with_owner))
            if e.kind == DIR:
                h.update(self.dir_hash(f"{reldir}/{name}" if reldir else name))
            h.update(b"\n")
        digest = h.digest(16)
        self._hashes[reldir] = digest
        return digest

    def root_hash(self) -> bytes:
        return self.dir_hash("")


def scan(
    root: Path,
    exclude: Excluder,
    previous: Tree | None = None,
    with_owner: bool = False,
    subdir: str = "",
    consume: bool = False,
    on_dir: Callable[[str], None] | None = None,
) -> Tree:
    """Scan `root` (or its `subdir`) into a Tree, reusing digests from `previous` by
    (inode, size, mtime, ctime). An unreadable path becomes an ERROR entry, never an exception;
    a missing root raises FileNotFoundError. `on_dir(reldir)` is called just before each
    directory is listed (the watcher adds its watch there, so no change after the listing is missed)."""
    tree = Tree(with_owner=with_owner)
    changed = 0
    before = len(previous) if previous is not None else 0
    now = time.time_ns()
    top = root / subdir if subdir else root
    try:
        top_st = os.stat(top) if not subdir else os.lstat(top)  # a root may be configured through a symlink
    except (FileNotFoundError, NotADirectoryError):
        top_st = None
    if top_st is None or not stat.S_ISDIR(top_st.st_mode):
        raise FileNotFoundError(errno.ENOENT, "sync directory does not exist", str(top))
    if not subdir:
        tree.root_id = (top_st.st_dev, top_st.st_ino)
    stack: list[str] = [subdir]
    while stack:
        reldir = stack.pop()
        tree.dirs.setdefault(reldir, {})
        absdir = os.path.join(root, reldir) if reldir else str(root)
        if on_dir is not None:
            on_dir(reldir)
        try:
            it = os.scandir(absdir)
        except OSError as exc:
            # The directory itself is listed but not readable.
            parent, _, name = reldir.rpartition("/")
            try:
                st = os.lstat(absdir)
            except OSError:
                continue
            tree.dirs.setdefault(parent, {})[name] = error_entry(name, st, exc)
            tree.error_paths.add(reldir)
            tree.dirs.pop(reldir, None)
            continue
        kids = tree.dirs[reldir]
        with it:
            for de in it:
                name = de.name
                if is_tmp_name(name):
                    tree.temps.append(de.path)
                    continue
                rel = f"{reldir}/{name}" if reldir else name
                if exclude(rel, name):
                    continue
                try:
                    st = de.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if previous is None:
                    prev = None
                elif consume:
                    # A cache nobody else holds: empty it as we go, so that two trees of
                    # 100,000 entries are never in memory at once.
                    prev = previous.dirs.get(reldir, {}).pop(name, None)
                else:
                    prev = previous.get(rel)
                full = de.path
                try:
                    e = stat_entry(
                        name, st, partial(read_file_entry, None, full), partial(os.readlink, full), prev, now
                    )
                except FileNotFoundError:
                    continue
                except FileChanged:
                    tree.busy.append(rel)
                    e = Entry(
                        FILE,
                        stat.S_IMODE(st.st_mode),
                        st.st_size,
                        st.st_mtime_ns,
                        b"",
                        ino=0,
                        uid=st.st_uid,
                        gid=st.st_gid,
                    )
                except OSError as exc:
                    e = error_entry(name, st, exc)
                if e is None:
                    continue
                kids[name] = e
                if e.kind == ERROR:
                    tree.error_paths.add(rel)
                if e != prev:
                    changed += 1
                if e.kind == DIR:
                    stack.append(rel)
                elif e.kind == FILE and st.st_nlink > 1:
                    tree.links.setdefault((st.st_dev, st.st_ino), set()).add(rel)
    tree.changed = changed > 0 or previous is None or len(tree) != before
    return tree


@dataclass
class Plan:
    """What the standby must do so that its tree equals the active's."""

    fetch: list[str] = field(default_factory=list)  # regular files to transfer
    make: list[tuple[str, Entry]] = field(default_factory=list)  # dirs and links, parents first
    chmod: list[tuple[str, Entry]] = field(default_factory=list)  # metadata-only changes
    delete: list[str] = field(default_factory=list)  # deepest first
    errors: list[tuple[str, Entry]] = field(default_factory=list)  # unreadable on the active

    def __bool__(self) -> bool:
        return bool(self.fetch or self.make or self.chmod or self.delete or self.errors)


def compare_entry(rel: str, want: Entry | None, have: Entry | None, with_owner: bool, plan: Plan) -> bool:
    """Add what turns `have` into `want` to `plan`; return True when `rel` is a dir to descend."""
    if want is None:
        if have is not None:
            plan.delete.append(rel)
        return False
    if want.kind == ERROR:
        plan.errors.append((rel, want))
        return False
    if have is not None and have.kind != want.kind:
        if have.kind != ERROR:
            plan.delete.append(rel)
        have = None
    if want.kind == DIR:
        if have is None:
            plan.make.append((rel, want))
        elif not same(want, have, with_owner):
            plan.chmod.append((rel, want))
        return True
    if same(want, have, with_owner):
        return False
    if want.kind == LINK:
        plan.make.append((rel, want))
    elif have is not None and have.digest == want.digest:
        plan.chmod.append((rel, want))
    else:
        plan.fetch.append(rel)
    return False


def diff(want: Tree, have: Tree, reldir: str = "", plan: Plan | None = None) -> Plan:
    """The plan that turns `have` into `want`, descending only where Merkle hashes differ."""
    plan = plan if plan is not None else Plan()
    with_owner = want.with_owner
    if (
        want.dirs.get(reldir) is not None
        and have.dirs.get(reldir) is not None
        and want.dir_hash(reldir) == have.dir_hash(reldir)
    ):
        return plan
    wk, hk = want.children(reldir), have.children(reldir)
    for name in sorted(wk.keys() | hk.keys()):
        rel = f"{reldir}/{name}" if reldir else name
        if compare_entry(rel, wk.get(name), hk.get(name), with_owner, plan):
            diff(want, have, rel, plan)
    plan.delete.sort(key=lambda p: (-p.count("/"), p))
    return plan
