"""File-system helpers: atomic writes, temp names, path validation, dir fds, flushes."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from hasync.errors import LockHeld, PathRefused

# Every temp file hasync creates starts with this; scanners skip it, start-up removes it.
TMP_PREFIX = ".hasync-tmp-"

_libc = ctypes.CDLL(None, use_errno=True)


def tmp_name() -> str:
    return TMP_PREFIX + secrets.token_hex(8)


def is_tmp_name(name: str) -> bool:
    return name.startswith(TMP_PREFIX)


def validate_relpath(path: str) -> str:
    """Return `path` if it is a safe relative POSIX path, else raise PathRefused.

    Refused: empty, absolute, any ``..`` or ``.`` component, empty components,
    NUL bytes, and our own temp-file names.
    """
    if not path:
        raise PathRefused("empty path")
    if "\0" in path:
        raise PathRefused(f"path {path!r} contains NUL")
    if path.startswith("/"):
        raise PathRefused(f"path {path!r} is absolute")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise PathRefused(f"path {path!r} has a {part or 'empty'!r} component")
        if is_tmp_name(part):
            raise PathRefused(f"path {path!r} uses the reserved temp prefix")
    return path


def fsync_fd(fd: int) -> None:
    os.fsync(fd)


def syncfs(fd: int) -> None:
    """Flush the whole file system holding `fd` (one flush for a batch of files)."""
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def atomic_file(path: Path, mode: int = 0o644, durable: bool = True) -> Iterator[BinaryIO]:
    """A file to write `path` through, atomically (as Borg's SaveFile): a crash leaves the old or the new file,
    never a mix.

    The file is a temp file (`tmp_name`, skipped by every scan, removed at start-up) in the target
    directory; when the block ends it is flushed, fsynced, renamed over `path` and the directory fsynced.
    If the block raises, the temp file is removed and `path` is untouched. `durable=False` skips the
    fsyncs: after a power loss the file may be missing or empty (for state whose loss only costs work)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with atomic_file_at(dir_fd, path.name, mode, durable) as f:
            yield f
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def atomic_file_at(dir_fd: int, name: str, mode: int = 0o644, durable: bool = True) -> Iterator[BinaryIO]:
    """`atomic_file` for the entry `name` of the directory open as `dir_fd` (a no-follow descriptor: the
    write never goes through a symlink swapped in for a parent)."""
    tmp = tmp_name()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with _suppress_enoent():
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    if durable:
        os.fsync(dir_fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Write `data` to `path` through `atomic_file`."""
    with atomic_file(path, mode, durable) as f:
        f.write(data)


def fsync_dir(directory: Path | str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _suppress_enoent:
    def __enter__(self) -> None:
        return None

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: object) -> bool:
        return isinstance(ev, FileNotFoundError)


def remove_paths(paths: list[str]) -> int:
    """Remove the given files or trees (our temp files found by a scan); return how many went."""
    removed = 0
    for p in paths:
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.unlink(p)
            removed += 1
        except FileNotFoundError:
            pass
    return removed


class DirFds:
    """Directory fds opened component by component with O_NOFOLLOW.

    Every write on the standby goes through a directory fd from here, so a
    symlinked parent can never redirect a write outside the sync dir, even if
    it is swapped in between check and use.
    """

    _FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fds: dict[str, int] = {}

    def __enter__(self) -> DirFds:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def forget(self, reldir: str) -> None:
        """Drop cached fds of `reldir` and below (after it was removed or replaced)."""
        prefix = reldir + "/"
        for key in [k for k in self._fds if k == reldir or k.startswith(prefix)]:
            os.close(self._fds.pop(key))

    def get(self, reldir: str, create: bool = False) -> int:
        """The fd of directory `reldir` ('' for the root), creating missing parts if asked.
        `reldir` is validated (validate_relpath): ``..`` can never climb out of the root."""
        fd = self._fds.get(reldir)
        if fd is not None:
            return fd
        if reldir == "":
            fd = os.open(self.root, self._FLAGS)
        else:
            parent, _, name = reldir.rpartition("/")
            validate_relpath(reldir)
            pfd = self.get(parent, create)
            try:
                fd = os.open(name, self._FLAGS, dir_fd=pfd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(name, 0o700, dir_fd=pfd)
                fd = os.open(name, self._FLAGS, dir_fd=pfd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise PathRefused(f"{reldir!r}: a parent is not a real directory") from exc
                raise
        self._fds[reldir] = fd
        return fd

    def fds(self) -> Iterator[int]:
        return iter(self._fds.values())

    def parent(self, relpath: str, create: bool = False) -> tuple[int, str]:
        """Validate `relpath` and return (no-follow fd of its parent directory, its last component)."""
        parent, _, name = validate_relpath(relpath).rpartition("/")
        return self.get(parent, create), name

    def lstat(self, relpath: str) -> os.stat_result:
        """lstat of `relpath` through no-follow directory fds (FileNotFoundError when absent)."""
        pfd, name = self.parent(relpath)
        return os.stat(name, dir_fd=pfd, follow_symlinks=False)


def lstat_at(root: Path, relpath: str) -> os.stat_result:
    """lstat of `relpath` (validated) inside `root`, never through a symlinked parent.
    Raises PathRefused (unsafe path, or a parent that is not a real directory) or OSError."""
    with DirFds(root) as fds:
        return fds.lstat(relpath)


def set_meta_at(dir_fd: int, name: str, mode: int, owner: tuple[int, int] | None = None) -> os.stat_result:
    """chown (when `owner` is given) and chmod `name` in `dir_fd`, never following a symlink.

    Linux has no lchmod: the name is opened with O_PATH|O_NOFOLLOW, its type checked on that fd,
    and the change made through /proc/self/fd on that very inode (what glibc's fchmodat with
    AT_SYMLINK_NOFOLLOW does). Anything but a regular file there (a symlink swapped in) is refused
    with ELOOP; directories get their modes through DirFds.
    Returns the stat after the change."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.ELOOP, "not a regular file (never followed)", name)
        proc = f"/proc/self/fd/{fd}"
        if owner is not None:
            os.chown(proc, *owner)
        os.chmod(proc, mode)
        return os.fstat(fd)
    finally:
        os.close(fd)


def split(relpath: str) -> tuple[str, str]:
    parent, _, name = relpath.rpartition("/")
    return parent, name


def free_bytes(path: Path) -> tuple[int, int]:
    """(free bytes for an unprivileged user, total bytes) of the file system holding `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def perm_bits(mode: int) -> int:
    return stat.S_IMODE(mode)


class StateLock:
    """An exclusive lock on the node's state dir: there is never a second writer."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "agent.lock"
        self._fd = -1

    def acquire(self, what: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = -1
            raise LockHeld(f"{self.path}: another hasync process ({what}) writes this node's state") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
