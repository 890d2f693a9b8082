"""What one node knows about itself for a diagnosis (free space, junk and unreadable files), and its fixes.

These run on the node that owns the files, as the agent's user, so that
"unreadable" means unreadable to hasync. Fixes re-check every criterion right
before they act, and never touch anything outside the sync dirs and the
backup dir.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import pwd
import stat
from pathlib import Path
from typing import Any

from hasync.backup import BackupSets
from hasync.config import Config
from hasync.errors import PathRefused, is_junk
from hasync.fsutil import DirFds, free_bytes, is_tmp_name, lstat_at
from hasync.halog import kv
from hasync.manifest import Excluder

MAX_FINDINGS = 200

log = logging.getLogger("hasync.diagnose")


def owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def describe(st: os.stat_result) -> dict[str, Any]:
    return {
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "ls": stat.filemode(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "owner": owner_name(st.st_uid),
        "group": group_name(st.st_gid),
        "size": st.st_size,
        "type": "dir" if stat.S_ISDIR(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode) else "file",
    }


def backups(cfg: Config) -> BackupSets:
    b = cfg.backup
    return BackupSets(b.dir, cfg.cluster.role_name, b.max_copies, b.set_period_s)


def _tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total


def storage_facts(cfg: Config) -> dict[str, Any]:
    """Free space of the backup dir and of each sync dir's file system (`df -hl`), and the backup sets."""
    places = [("backup", "LocalBackup", cfg.backup.dir)] + [("sync", d.name, d.path) for d in cfg.sync.dirs]
    out: list[dict[str, Any]] = []
    for kind, name, path in places:
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent  # a missing dir: measure the file system it would be on
        try:
            free, total = free_bytes(probe)
            out.append(
                {
                    "kind": kind,
                    "name": name,
                    "path": str(path),
                    "free": free,
                    "total": total,
                    "device": os.stat(probe).st_dev,
                    "exists": path.exists(),
                }
            )
        except OSError as exc:
            out.append({"kind": kind, "name": name, "path": str(path), "error": exc.strerror or str(exc)})
    sets = [{"name": p.name, "bytes": _tree_bytes(p)} for p in backups(cfg).sets()]
    return {"places": out, "backup_sets": sets, "max_copies": cfg.backup.max_copies}


def file_facts(cfg: Config) -> dict[str, Any]:
    """Junk files (`sed*`, size 0, mode 000), unreadable paths and missing sync dirs (`find`, `ll`)."""
    junk: list[dict[str, Any]] = []
    unreadable: list[dict[str, Any]] = []
    missing: list[dict[str, Any]] = []
    is_root = os.geteuid() == 0
    excluded = Excluder(cfg.sync.exclude)  # what is not synchronized cannot block the sync
    for d in cfg.sync.dirs:
        if not d.path.is_dir():
            missing.append({"dir": d.name, "path": str(d.path)})
            continue
        # fwalk: every directory is opened without following links, every name looked at through its fd.
        for dirpath, dirnames, filenames, dfd in os.fwalk(d.path, onerror=None, follow_symlinks=False):
            rel_dir = os.path.relpath(dirpath, d.path)
            rel_dir = "" if rel_dir == "." else rel_dir
            for name in [*dirnames, *filenames]:
                if is_tmp_name(name):
                    continue
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if excluded(rel, name):
                    continue
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISLNK(st.st_mode):
                    continue
                info = {"dir": d.name, "path": rel, **describe(st)}
                if is_junk(name, st):
                    if len(junk) < MAX_FINDINGS:
                        junk.append(info)
                    continue
                want = os.R_OK | (os.X_OK if stat.S_ISDIR(st.st_mode) else 0)
                # As root everything is readable; then only a mode without any read bit counts.
                blocked = (
                    (st.st_mode & 0o444) == 0
                    if is_root
                    else not os.access(name, want, dir_fd=dfd, follow_symlinks=False)
                )
                if blocked and len(unreadable) < MAX_FINDINGS:
                    unreadable.append(info)
            dirnames[:] = [
                n
                for n in dirnames
                if os.access(n, os.R_OK | os.X_OK, dir_fd=dfd, follow_symlinks=False)
                and not excluded(f"{rel_dir}/{n}" if rel_dir else n, n)
            ]
    return {"junk": junk, "unreadable": unreadable, "missing": missing, "uid": os.geteuid()}


def stat_paths(cfg: Config, paths: list[tuple[str, str]]) -> list[dict[str, Any] | None]:
    """Mode and owner of the given (dir, path) on this node, None where absent, refused, or reached only
    through a symlinked parent (looked at through no-follow directory fds)."""
    out: list[dict[str, Any] | None] = []
    for dir_name, rel in paths:
        try:
            out.append(describe(lstat_at(cfg.sync_dir(dir_name).path, rel)))
        except (KeyError, OSError, PathRefused):
            out.append(None)
    return out


def prune_backups(cfg: Config, need_free: int) -> list[str]:
    """Prune backup sets to max_copies; then, while the backup file system has less than `need_free`
    bytes free, the oldest further — never the newest. Returns what was removed."""
    sets = backups(cfg)
    removed = [f"removed backup set {p}" for p in sets.prune()]
    for r in removed:
        log.warning("fix applied %s", kv(change=r))
    while need_free > 0:
        remaining = sets.sets()
        if len(remaining) <= 1:
            break
        try:
            free, _ = free_bytes(cfg.backup.dir)
        except OSError:
            break
        if free >= need_free:
            break
        more = [f"removed backup set {p}" for p in sets.prune(keep=len(remaining) - 1)]
        for r in more:
            log.warning("fix applied %s", kv(change=r, reason=f"less than {need_free} bytes free"))
        removed += more
    return removed


def delete_junk(cfg: Config, paths: list[tuple[str, str]]) -> list[str]:
    """Delete the given junk files, each only if it still meets all three criteria right now."""
    done: list[str] = []
    for dir_name, rel in paths:
        try:
            root = cfg.sync_dir(dir_name).path
        except KeyError:
            continue
        with DirFds(root) as fds:
            try:
                pfd, name = fds.parent(rel)
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                if not is_junk(name, st):
                    continue
                os.unlink(name, dir_fd=pfd)
                os.fsync(pfd)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    continue
                raise
        done.append(f"deleted junk file {root / rel} (size 0, mode 0000)")
        log.warning("fix applied %s", kv(change=done[-1], dir=dir_name, path=rel))
    return done
