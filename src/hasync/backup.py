"""Backup sets: the old version of every file the standby overwrites or deletes (SPEC §4)."""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from hasync.errors import PathRefused
from hasync.fsutil import DirFds, atomic_file_at, validate_relpath

STAMP = "%Y%m%d%H%M%S"
# In a set that pruning never removes: it holds what a demoted node set aside (its unsynced work).
PINNED = ".hasync-set-aside"


@dataclass
class BackupSets:
    """Sets named ``<role_name>_<YYYYmmddHHMMSS>`` (local time) under `root`.

    One set collects every displaced version during `period_s`; a path already
    in the current set keeps its first (oldest) version. At most `max_copies`
    sets are kept, the oldest go first, and the newest is never pruned.
    """

    root: Path
    role_name: str
    max_copies: int = 5
    period_s: float = 300.0

    def __post_init__(self) -> None:
        self._pattern = re.compile(re.escape(self.role_name) + r"_(\d{14})(?:-(\d+))?")
        self._current: Path | None = None
        self._current_t = 0.0

    def sets(self) -> list[Path]:
        """Existing sets, oldest first."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            m = self._pattern.fullmatch(name)
            if m:
                found.append((m.group(1), int(m.group(2) or 0), self.root / name))
        return [p for _, _, p in sorted(found)]

    def current(self) -> Path:
        now = time.time()
        if self._current is not None and now - self._current_t < self.period_s and self._current.is_dir():
            return self._current
        base = f"{self.role_name}_{time.strftime(STAMP, time.localtime(now))}"
        path, n = self.root / base, 0
        while path.exists():
            n += 1
            path = self.root / f"{base}-{n}"
        path.mkdir(parents=True, mode=0o700)
        self._current, self._current_t = path, now
        self.prune()
        return path

    def set_aside(self, reason: str) -> Path:
        """Start a new set now and pin it: the versions a demoted node replaces go there and are never
        pruned (the operator removes the set once merged). Returns the set."""
        self._current = None
        path = self.current()
        (path / PINNED).write_text(reason + "\n", encoding="utf-8")  # a marker: its content is for people
        return path

    def prune(self, keep: int | None = None) -> list[Path]:
        """Remove the oldest sets beyond `keep` (default max_copies); never the newest, never a pinned
        one (`set_aside`), which does not count either."""
        keep = max(1, self.max_copies if keep is None else keep)
        sets = [s for s in self.sets() if not (s / PINNED).exists()]
        removed = []
        for old in sets[: max(0, len(sets) - keep)]:
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
        return removed

    def keep(self, dir_name: str, relpath: str, src_dir_fd: int, name: str, move: bool) -> None:
        """Put the current version of `name` (in `src_dir_fd`) into the current set.

        `move` renames it there (a deletion); otherwise it is hard-linked (an
        overwrite: the new file is renamed over the name afterwards). Across
        file systems it is copied.

        Everything inside the set goes through no-follow directory fds (fsutil.DirFds), like the
        standby's writes: an older version kept in the set that is a symlink can never redirect a
        later backup outside. When a parent in the current set is not a real directory (it holds
        the older version of a path that was a link or a file), a new set is started for this one.
        """
        target = f"{validate_relpath(dir_name)}/{validate_relpath(relpath)}"
        for fresh in (False, True):
            with DirFds(self.current()) as fds:
                try:
                    dfd, dname = fds.parent(target, create=True)
                except (PathRefused, FileExistsError):
                    if fresh:
                        raise
                    self._current = None  # current() starts the next set ("-1", "-2", ... suffix)
                    continue
                _keep_at(src_dir_fd, name, dfd, dname, move)
                return


def _keep_at(src_dir_fd: int, name: str, dst_dir_fd: int, dst_name: str, move: bool) -> None:
    try:
        os.stat(dst_name, dir_fd=dst_dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        pass
    else:  # already in this set: its first (oldest) version stays
        if move:
            _remove_at(src_dir_fd, name)
        return
    try:
        if move:
            os.rename(name, dst_name, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        else:
            os.link(name, dst_name, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        _copy_at(src_dir_fd, name, dst_dir_fd, dst_name)
        if move:
            _remove_at(src_dir_fd, name)


_NOFOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def _copy_at(src_dir_fd: int, name: str, dst_dir_fd: int, dst_name: str) -> None:
    """Copy `name` (a link, a dir tree or a regular file) into `dst_dir_fd`, never following a link."""
    st = os.stat(name, dir_fd=src_dir_fd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(name, dir_fd=src_dir_fd), dst_name, dir_fd=dst_dir_fd)
    elif stat.S_ISDIR(st.st_mode):
        fd = os.open(name, _NOFOLLOW | os.O_DIRECTORY, dir_fd=src_dir_fd)
        try:  # /proc/self/fd/N names exactly the directories opened above, whatever their paths become
            shutil.copytree(f"/proc/self/fd/{fd}", f"/proc/self/fd/{dst_dir_fd}/{dst_name}", symlinks=True)
        finally:
            os.close(fd)
    elif stat.S_ISREG(st.st_mode):
        src = os.open(name, _NOFOLLOW | os.O_NONBLOCK, dir_fd=src_dir_fd)
        try:  # whole or not at all: a cut copy under the final name would stay as "the first version" kept
            # Not fsynced here: the apply that replaces the original makes the batch durable (syncfs).
            with open(src, "rb", closefd=False) as fi, atomic_file_at(dst_dir_fd, dst_name, 0o600, False) as fo:
                shutil.copyfileobj(fi, fo, 1 << 20)
                fo.flush()
                os.fchmod(fo.fileno(), stat.S_IMODE(st.st_mode))
                os.utime(fo.fileno(), ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(src)
    # fifos, sockets and devices are never synchronized: nothing to keep


def _remove_at(dir_fd: int, name: str) -> None:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)
