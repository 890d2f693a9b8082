"""File-system helpers: path validation, atomic writes, safe dir fds, backup sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hasync.backup import BackupSets
from hasync.errors import PathRefused
from hasync.fsutil import DirFds, atomic_file, atomic_write, remove_paths, tmp_name, validate_relpath
from hasync.manifest import Excluder, scan

SAFE = st.text(st.characters(blacklist_characters="/\0", blacklist_categories=["Cs"]), min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..") and not s.startswith(".hasync-tmp-")
)


@given(st.lists(SAFE, min_size=1, max_size=5))
def test_safe_paths_are_accepted(parts: list[str]) -> None:
    p = "/".join(parts)
    assert validate_relpath(p) == p


@given(st.lists(SAFE, max_size=3), st.sampled_from(["..", ".", "", "\0x", ".hasync-tmp-1"]), st.lists(SAFE, max_size=3))
def test_unsafe_components_are_refused(before: list[str], bad: str, after: list[str]) -> None:
    with pytest.raises(PathRefused):
        validate_relpath("/".join([*before, bad, *after]))


@given(st.lists(SAFE, min_size=1, max_size=3))
def test_absolute_paths_are_refused(parts: list[str]) -> None:
    with pytest.raises(PathRefused):
        validate_relpath("/" + "/".join(parts))


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "f"
    atomic_write(target, b"old")
    atomic_write(target, b"new" * 1000)
    assert target.read_bytes() == b"new" * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_atomic_file_crash_in_the_block_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write(target, b"old")
    with pytest.raises(RuntimeError, match="crash"), atomic_file(target) as f:
        f.write(b"half of the new")
        f.flush()
        assert len(list(tmp_path.iterdir())) == 2  # the temp file is there while the block runs
        raise RuntimeError("crash")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_atomic_file_creates_a_new_file_with_its_mode_and_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "new"
    with atomic_file(target, mode=0o600) as f:
        f.write(b"data")
        assert not target.exists()  # nothing under the final name before the block ends
    assert target.read_bytes() == b"data"
    assert target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["new"]


@pytest.mark.parametrize(("durable", "fsyncs"), [(True, 2), (False, 0)])
def test_atomic_file_durable_fsyncs_file_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool, fsyncs: int
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write(tmp_path / "f", b"x", durable=durable)
    assert len(synced) == fsyncs  # the file, then its directory (the rename)
    assert (tmp_path / "f").read_bytes() == b"x"


def test_dirfds_refuse_symlinked_parent(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    with DirFds(root) as fds, pytest.raises(PathRefused):
        fds.get("link/sub", create=True)
    assert list((tmp_path / "outside").iterdir()) == []


def test_scan_finds_temp_files_and_they_are_removed(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / tmp_name()).write_text("partial")
    (tmp_path / "keep").write_text("k")
    tree = scan(tmp_path, Excluder([]))
    assert tree.get("d/keep") is None and len(tree.temps) == 1 and tree.get("keep") is not None
    assert remove_paths(tree.temps) == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["d", "keep"]


def test_backup_sets_prune_oldest_never_newest(tmp_path: Path) -> None:
    b = BackupSets(tmp_path, "FlinkServer", max_copies=3, period_s=0.0)
    for stamp in ("20260101000000", "20260102000000", "20260103000000", "20260104000000"):
        (tmp_path / f"FlinkServer_{stamp}").mkdir()
    (tmp_path / "unrelated").mkdir()
    removed = b.prune()
    assert [p.name for p in removed] == ["FlinkServer_20260101000000"]
    assert b.prune(keep=0) and [p.name for p in b.sets()] == ["FlinkServer_20260104000000"]
    assert (tmp_path / "unrelated").exists()


def test_backup_keep_links_first_version_in_set(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("v1")
    b = BackupSets(tmp_path / "backup", "FlinkServer", max_copies=2, period_s=3600)
    fd = os.open(data, os.O_RDONLY | os.O_DIRECTORY)
    try:
        b.keep("conf", "f", fd, "f", move=False)
        (data / "f.new").write_text("v2")
        os.rename(data / "f.new", data / "f")
        b.keep("conf", "f", fd, "f", move=False)  # same set: the first version stays
        b.keep("conf", "f", fd, "f", move=True)
    finally:
        os.close(fd)
    (only,) = b.sets()
    assert (only / "conf" / "f").read_text() == "v1"
    assert not (data / "f").exists()
    assert only.name.startswith("FlinkServer_") and len(only.name) == len("FlinkServer_") + 14
