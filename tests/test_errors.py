"""hasync.errors: the one exception tree, the Cause enum and the rules around it (order, peer names, junk)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from hasync import errors
from hasync.alarms import notify, store
from hasync.errors import (
    CAUSE_ORDER,
    Cause,
    HasyncError,
    NotifyError,
    StoreError,
    StoreUnavailable,
    cause_and_message,
    cause_of,
    first_cause,
    is_junk,
    unreadable_cause,
)


def _tree() -> list[type[HasyncError]]:
    out: list[type[HasyncError]] = []
    todo: list[type[HasyncError]] = [HasyncError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


def test_store_and_notify_errors_are_in_the_one_tree() -> None:
    # Defined once, in hasync.errors; the alarm modules raise the same classes.
    assert store.StoreError is StoreError and store.StoreUnavailable is StoreUnavailable
    assert notify.NotifyError is NotifyError
    assert issubclass(StoreUnavailable, StoreError) and issubclass(StoreError, HasyncError)
    assert issubclass(NotifyError, HasyncError)
    assert (StoreError.code, StoreError.exit_code, StoreError.http_status) == ("store_error", 1, 503)
    assert (StoreUnavailable.code, StoreUnavailable.http_status) == ("store_error", 503)
    assert (NotifyError.code, NotifyError.exit_code, NotifyError.http_status) == ("notify_error", 1, 502)


def test_the_docstring_draws_every_class_of_the_tree() -> None:
    doc = errors.__doc__ or ""
    classes = [c for c in _tree() if c.__module__ == "hasync.errors"]
    assert len(classes) >= 16
    missing = [c.__name__ for c in classes if f" {c.__name__} " not in doc]
    assert not missing, missing
    for cls in classes:
        assert isinstance(cls.code, str) and isinstance(cls.exit_code, int) and 400 <= cls.http_status < 600


def test_cause_order_names_every_cause_once() -> None:
    assert sorted(CAUSE_ORDER) == sorted(Cause) and len(set(CAUSE_ORDER)) == len(Cause)
    assert first_cause([Cause.SYNC_ERROR, Cause.JUNK_FILE, Cause.DISK_FULL]) is Cause.DISK_FULL
    assert first_cause([Cause.UNKNOWN, Cause.PEER_AGENT_DOWN]) is Cause.PEER_AGENT_DOWN
    assert first_cause(c for c in [Cause.PERMISSION_DENIED]) is Cause.PERMISSION_DENIED
    assert first_cause([]) is None


@pytest.mark.parametrize("cause", list(Cause))
def test_a_peer_naming_a_known_cause_gets_it(cause: Cause) -> None:
    assert cause_of(cause.value) is cause
    assert cause_and_message(cause.value, "boom") == (cause, "boom")


@pytest.mark.parametrize("name", ["no_such_cause", "", "JUNK_FILE", "junk_file ", None, 7, ["disk_full"]])
def test_a_peer_naming_an_unknown_cause_gets_sync_error_and_keeps_its_text(name: object) -> None:
    assert cause_of(name) is Cause.SYNC_ERROR
    cause, message = cause_and_message(name, "boom")
    assert cause is Cause.SYNC_ERROR and message == f"{name}: boom"


def _file(path: Path, mode: int, data: bytes = b"") -> os.stat_result:
    path.write_bytes(data)
    os.chmod(path, mode)
    return os.lstat(path)


def test_junk_is_a_regular_empty_sed_file_without_permissions(tmp_path: Path) -> None:
    assert is_junk("sedXyZ12", _file(tmp_path / "sedXyZ12", 0))
    assert not is_junk("sedfull", _file(tmp_path / "sedfull", 0, b"x"))  # size is not 0
    assert not is_junk("sedread", _file(tmp_path / "sedread", 0o400))  # has a permission bit
    assert not is_junk("other", _file(tmp_path / "other", 0))  # not named sed*
    os.mkfifo(tmp_path / "sedfifo", 0)
    assert not is_junk("sedfifo", os.lstat(tmp_path / "sedfifo"))  # not a regular file
    os.mkdir(tmp_path / "seddir", 0)
    assert not is_junk("seddir", os.lstat(tmp_path / "seddir"))


def test_an_unreadable_path_is_junk_only_when_refused_for_permission(tmp_path: Path) -> None:
    junk = _file(tmp_path / "sed1", 0)
    denied = OSError(errno.EACCES, "Permission denied")
    assert unreadable_cause("sed1", junk, denied) is Cause.JUNK_FILE
    assert unreadable_cause("sed1", junk, OSError(errno.EPERM, "x")) is Cause.JUNK_FILE
    # Any other failure is its own cause, whatever the file looks like.
    assert unreadable_cause("sed1", junk, OSError(errno.EIO, "I/O error")) is Cause.SYNC_ERROR
    plain = _file(tmp_path / "plain", 0)
    assert unreadable_cause("plain", plain, denied) is Cause.PERMISSION_DENIED
    os.mkfifo(tmp_path / "sedfifo", 0)
    assert unreadable_cause("sedfifo", os.lstat(tmp_path / "sedfifo"), denied) is Cause.PERMISSION_DENIED
