"""backup.py: BackupSets keep the displaced versions, prune the oldest sets, and never write or delete
through a symlink planted in the backup directory."""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path
from typing import BinaryIO

import pytest

from hasync.backup import BackupSets
from hasync.errors import PathRefused

SET = re.compile(r"FlinkServer_\d{14}(-\d+)?")


def src(tmp_path: Path, files: dict[str, bytes]) -> tuple[Path, int]:
    """A source directory (the standby's sync dir) with `files`, and its fd."""
    root = tmp_path / "data"
    root.mkdir(exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root, os.open(root, os.O_RDONLY | os.O_DIRECTORY)


def contents(s: Path) -> dict[str, bytes]:
    return {
        os.path.relpath(os.path.join(top, n), s): Path(top, n).read_bytes()
        for top, _, names in os.walk(s)
        for n in names
    }


def test_keep_links_an_overwritten_file_and_moves_a_deleted_one(tmp_path: Path) -> None:
    root, fd = src(tmp_path, {"over": b"old over", "gone": b"old gone"})
    b = BackupSets(tmp_path / "backup", "FlinkServer", period_s=3600)
    try:
        b.keep("dirA", "sub/over", fd, "over", move=False)
        b.keep("dirA", "gone", fd, "gone", move=True)
    finally:
        os.close(fd)
    (s,) = b.sets()
    assert SET.fullmatch(s.name) and s.stat().st_mode & 0o777 == 0o700
    assert contents(s) == {"dirA/sub/over": b"old over", "dirA/gone": b"old gone"}
    assert (root / "over").exists() and not (root / "gone").exists()
    assert os.stat(root / "over").st_ino == os.stat(s / "dirA" / "sub" / "over").st_ino  # a hard link


def test_a_path_already_in_the_set_keeps_its_first_version(tmp_path: Path) -> None:
    root, fd = src(tmp_path, {"f": b"first"})
    b = BackupSets(tmp_path / "backup", "FlinkServer", period_s=3600)
    try:
        b.keep("d", "f", fd, "f", move=False)
        (root / "f").unlink()
        (root / "f").write_bytes(b"second")
        b.keep("d", "f", fd, "f", move=True)  # a deletion of a path already kept: removed, not kept again
    finally:
        os.close(fd)
    (s,) = b.sets()
    assert contents(s) == {"d/f": b"first"} and not (root / "f").exists()


def test_a_new_set_starts_after_the_period(tmp_path: Path) -> None:
    _, fd = src(tmp_path, {"a": b"a", "b": b"b"})
    b = BackupSets(tmp_path / "backup", "FlinkServer", period_s=0)  # every keep in a set of its own
    try:
        b.keep("d", "a", fd, "a", move=False)
        b.keep("d", "b", fd, "b", move=False)
    finally:
        os.close(fd)
    first, second = b.sets()
    assert contents(first) == {"d/a": b"a"} and contents(second) == {"d/b": b"b"}


def make_sets(root: Path, n: int) -> list[Path]:
    paths = [root / f"FlinkServer_2024010100{i:04d}" for i in range(n)]
    for p in paths:
        p.mkdir(parents=True)
        (p / "x").write_bytes(b"x")
    return paths


def test_prune_removes_the_oldest_sets_beyond_max_copies(tmp_path: Path) -> None:
    paths = make_sets(tmp_path / "backup", 7)
    (tmp_path / "backup" / "unrelated").mkdir()
    (tmp_path / "backup" / "OtherRole_20240101000000").mkdir()
    b = BackupSets(tmp_path / "backup", "FlinkServer", max_copies=5)
    assert b.prune() == paths[:2]
    assert b.sets() == paths[2:]
    assert sorted(os.listdir(tmp_path / "backup")) == sorted(
        [p.name for p in paths[2:]] + ["unrelated", "OtherRole_20240101000000"]
    )


def test_prune_never_removes_the_newest_set(tmp_path: Path) -> None:
    paths = make_sets(tmp_path / "backup", 3)
    b = BackupSets(tmp_path / "backup", "FlinkServer", max_copies=5)
    assert b.prune(keep=0) == paths[:2] and b.sets() == paths[2:]


def test_sets_are_ordered_by_time_then_suffix(tmp_path: Path) -> None:
    root = tmp_path / "backup"
    for name in ("FlinkServer_20240101000000-10", "FlinkServer_20240101000000-2", "FlinkServer_20231231235959"):
        (root / name).mkdir(parents=True)
    (root / "FlinkServer_2024").mkdir()  # not a set's name
    names = [p.name for p in BackupSets(root, "FlinkServer").sets()]
    assert names == ["FlinkServer_20231231235959", "FlinkServer_20240101000000-2", "FlinkServer_20240101000000-10"]


def test_prune_does_not_follow_a_symlinked_set(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep-me").write_bytes(b"!")
    root = tmp_path / "backup"
    root.mkdir()
    (root / "FlinkServer_20000101000000").symlink_to(precious)  # the oldest "set"
    make_sets(root, 2)
    BackupSets(root, "FlinkServer", max_copies=1).prune()
    assert (precious / "keep-me").read_bytes() == b"!"


def test_a_set_replaced_by_a_symlink_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root, fd = src(tmp_path, {"f": b"old", "g": b"old g"})
    b = BackupSets(tmp_path / "backup", "FlinkServer", period_s=3600)
    try:
        b.keep("d", "f", fd, "f", move=False)
        (s,) = b.sets()
        os.rename(s, tmp_path / "moved")
        s.symlink_to(outside)  # the current set's name now leads outside
        with pytest.raises(OSError):
            b.keep("d", "g", fd, "g", move=True)
    finally:
        os.close(fd)
    assert os.listdir(outside) == [] and (root / "g").read_bytes() == b"old g"


def test_a_symlink_inside_a_set_is_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    _, fd = src(tmp_path, {"f": b"old"})
    b = BackupSets(tmp_path / "backup", "FlinkServer", period_s=3600)
    try:
        b.keep("d", "x", fd, "f", move=False)
        (s,) = b.sets()
        (s / "d" / "sub").symlink_to(outside)  # the older version of `sub` kept here was a link
        b.keep("d", "sub/f", fd, "f", move=False)  # goes to a new set, never through the link
    finally:
        os.close(fd)
    assert os.listdir(outside) == []
    first, second = b.sets()
    assert contents(first) == {"d/x": b"old"} and contents(second) == {"d/sub/f": b"old"}


@pytest.mark.parametrize(("dir_name", "rel"), [("..", "f"), ("d", "../f"), ("d", "/abs"), ("d", "a//b"), ("d", "a\0b")])
def test_unsafe_names_are_refused(tmp_path: Path, dir_name: str, rel: str) -> None:
    root, fd = src(tmp_path, {"f": b"x"})
    b = BackupSets(tmp_path / "backup", "FlinkServer")
    try:
        with pytest.raises(PathRefused):
            b.keep(dir_name, rel, fd, "f", move=True)
    finally:
        os.close(fd)
    assert (root / "f").exists() and not (tmp_path / "f").exists()


def test_a_copy_cut_short_leaves_no_partial_version_in_the_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a hard link is impossible (another file system: EXDEV) the old version is copied; a copy that
    fails half-way leaves nothing under its name, so the next keep still keeps the whole old version."""
    old = os.urandom(3 << 20)
    root, fd = src(tmp_path, {"big": old})
    b = BackupSets(tmp_path / "backup", "FlinkServer", period_s=3600)

    def no_link(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    real_copy = shutil.copyfileobj

    def cut(fi: BinaryIO, fo: BinaryIO, length: int = 0) -> None:
        fo.write(fi.read(1 << 20))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(shutil, "copyfileobj", cut)
    try:
        with pytest.raises(OSError):
            b.keep("d", "big", fd, "big", move=False)
        (s,) = b.sets()
        assert contents(s) == {}  # no partial "first version", no temp file
        monkeypatch.setattr(shutil, "copyfileobj", real_copy)
        b.keep("d", "big", fd, "big", move=False)
    finally:
        os.close(fd)
    assert contents(s) == {"d/big": old}
    assert os.stat(s / "d" / "big").st_mode & 0o777 == os.stat(root / "big").st_mode & 0o777
