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

STAMP = "%Y%m%d%H%M%S"


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

    def prune(self, keep: int | None = None) -> list[Path]:
        """Remove the oldest sets beyond `keep` (default max_copies); never the newest."""
        keep = max(1, self.max_copies if keep is None else keep)
        sets = self.sets()
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
        """
        dst = self.current() / dir_name / relpath
        if os.path.lexists(dst):
            if move:
                _remove_at(src_dir_fd, name)
            return
        dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            if move:
                os.rename(name, dst, src_dir_fd=src_dir_fd)
            else:
                os.link(name, dst, src_dir_fd=src_dir_fd, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            _copy_at(src_dir_fd, name, dst)
            if move:
                _remove_at(src_dir_fd, name)


def _copy_at(dir_fd: int, name: str, dst: Path) -> None:
    src = f"/proc/self/fd/{dir_fd}/{name}"
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
    elif os.path.isdir(src):
        shutil.copytree(src, dst, symlinks=True)
    else:
        shutil.copy2(src, dst, follow_symlinks=False)


def _remove_at(dir_fd: int, name: str) -> None:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)
