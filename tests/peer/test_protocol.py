"""hasync.peer.protocol: the wire formats decode to typed values (Kind, ScanError, Cause, frozen models),
and encode to the same bytes as before."""

from __future__ import annotations

import os
from typing import Any

import blake3
import pytest

from hasync.errors import Cause, PathRefused, PeerError, ScanError
from hasync.manifest import DIR, ERROR, FILE, LINK, Entry, Kind
from hasync.peer.models import ChangeFeed, FileFailed, FileHead, PathError, PeerInfo, PeerStatus
from hasync.peer.protocol import (
    VANISHED,
    dec_changes,
    dec_entry,
    dec_failed,
    dec_head,
    dec_info,
    dec_status,
    enc_entry,
    enc_failed,
    enc_head,
    enc_vanished,
    pack,
    unpack,
)

DIGEST = blake3.blake3(b"x").digest()
ENTRIES = [
    Entry(FILE, 0o644, 1, 5, DIGEST, uid=1, gid=2),
    Entry(DIR, 0o755),
    Entry(LINK, 0o777, 3, 5, link="../t"),
    Entry(ERROR, 0, error=ScanError(Cause.PERMISSION_DENIED, "Permission denied: a: b")),
    Entry(ERROR, 0, error=ScanError(Cause.JUNK_FILE, "")),
]


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: str(e.kind))
def test_entries_round_trip_with_their_kind_and_error_typed(entry: Entry) -> None:
    row = unpack(pack(enc_entry(entry, b"\1" * 16 if entry.kind is DIR else None)))
    assert row[0] == entry.kind.value and type(row[0]) is str  # the letter on the wire, unchanged
    assert row[8] == ("" if entry.error is None else f"{entry.error.cause.value}: {entry.error.message}")
    back, dir_hash = dec_entry(row)
    assert type(back.kind) is Kind and back.kind is entry.kind
    assert back == entry
    assert back.error == entry.error and back.cause == (None if entry.error is None else entry.error.cause)
    assert dir_hash == (b"\1" * 16 if entry.kind is DIR else None)


def test_kind_letters_are_the_wire_and_cache_values() -> None:
    assert [k.value for k in Kind] == ["f", "d", "l", "e"]
    assert (FILE, DIR, LINK, ERROR) == ("f", "d", "l", "e")
    assert str(Kind.FILE) == "f" and f"{Kind.DIR}" == "d" and Kind.LINK.encode() == b"l"


def test_an_entry_naming_an_unknown_cause_is_sync_error_with_its_text() -> None:
    row = ["e", 0, 0, 0, b"", b"", 0, 0, "no_such_cause: boom"]
    e, _ = dec_entry(row)
    assert e.error == ScanError(Cause.SYNC_ERROR, "no_such_cause: boom")
    e, _ = dec_entry(["e", 0, 0, 0, b"", b"", 0, 0, "no separator"])
    assert e.error == ScanError(Cause.SYNC_ERROR, "no separator")
    # A non-error entry carries no error, whatever its (ignored) text.
    assert dec_entry(["d", 0o755, 0, 0, b"", b"", 0, 0, "junk_file: x"])[0].error is None


def test_file_errors_decode_typed_and_encode_as_before() -> None:
    err = ScanError(Cause.JUNK_FILE, "Permission denied")
    assert enc_failed("a/sed1", err) == pack([b"a/sed1", "junk_file", "Permission denied"])
    assert dec_failed(enc_failed("a/sed1", err)) == FileFailed(b"a/sed1", err)
    # An unknown cause: sync_error, its text kept; the same rule as entries and the standby's status.
    failed = dec_failed(pack([b"p", "newer_cause", "boom"]))
    assert failed.error == ScanError(Cause.SYNC_ERROR, "newer_cause: boom") and not failed.vanished
    with pytest.raises(ValueError):
        dec_failed(pack([b"p", "sync_error"]))


def test_vanished_is_a_flag_with_the_same_wire_bytes() -> None:
    assert enc_vanished("gone") == pack([os.fsencode("gone"), "sync_error", "vanished"])
    failed = dec_failed(enc_vanished("gone"))
    assert failed.vanished and failed.raw == b"gone"
    assert not dec_failed(pack([b"p", "sync_error", "vanished away"])).vanished
    assert VANISHED == "vanished"


def test_file_heads_encode_as_before_and_decode_to_a_model() -> None:
    assert enc_head("d/f", 0o100644, 4, 7, 1, 2, None) == pack([b"d/f", "f", 0o644, 4, 7, 1, 2])
    assert enc_head("d/f", 0o100600, 4, 7, 1, 2, 3) == pack([b"d/f", "f", 0o600, 4, 7, 1, 2, 3])
    head = dec_head(enc_head("d/f", 0o100644, 4, 7, 1, 2, 3))
    assert head == FileHead(b"d/f", Entry(FILE, 0o644, 4, 7, uid=1, gid=2), None, 3)
    assert head.meta is not None and type(head.meta.kind) is Kind
    bad = dec_head(pack([b"d/f", "f", 0o644, 4, 7, 2**40, 2]))
    assert bad.meta is None and isinstance(bad.refused, ValueError) and bad.raw == b"d/f"


def _feed(changes: Any, **kw: Any) -> dict[str, Any]:
    return {"instance": "i", "seq": 3, "reset": False, "changes": changes, "roots": {"conf": b"\2" * 16}, **kw}


def test_a_change_feed_decodes_each_change_on_its_own() -> None:
    good = enc_entry(Entry(FILE, 0o644, 1, 5, DIGEST))
    feed = dec_changes(_feed([["conf", b"a", good], ["conf", b"gone", None], ["conf", b"../x", good]]))
    assert isinstance(feed, ChangeFeed) and (feed.instance, feed.seq, feed.reset) == ("i", 3, False)
    assert dict(feed.roots) == {"conf": b"\2" * 16}
    a, gone, evil = feed.changes
    assert (a.dir, a.path, a.entry, a.refused) == ("conf", "a", Entry(FILE, 0o644, 1, 5, DIGEST), None)
    assert (gone.path, gone.entry, gone.refused) == ("gone", None, None)
    assert isinstance(evil.refused, PathRefused) and evil.raw == b"../x" and evil.entry is None
    bad_entry = dec_changes(_feed([["conf", b"b", ["x", 0, 0, 0, b"", b"", 0, 0, ""]]])).changes[0]
    assert isinstance(bad_entry.refused, ValueError)
    for doc in (_feed("no"), _feed([], seq=-1), _feed([], roots={"conf": "hash"}), {"seq": 1}, ["x"]):
        with pytest.raises(ValueError):
            dec_changes(doc)


def test_info_of_the_active_and_of_a_standby() -> None:
    active = dec_info(
        {"node": "a", "hostname": "ha", "role": "active", "time": 5.0, "instance": "i", "seq": 9,
         "roots": {"conf": None}, "with_owner": True, "lag_s": 1}
    )  # fmt: skip
    assert active == PeerInfo("a", "active", "ha", 5.0, "i", 9, {"conf": None}, True, 1.0)
    assert active.is_active and isinstance(active.lag_s, float)
    standby = dec_info({"node": "b", "hostname": "hb", "role": "standby", "time": 5})
    assert not standby.is_active and standby.roots == {} and standby.lag_s is None
    assert not dec_info({}).is_active
    bad = [
        "not a map",
        {"role": "active", "roots": {"conf": "x"}, "instance": "i", "seq": 1, "with_owner": True},
        {"role": "active", "roots": {}, "instance": "i", "seq": -1, "with_owner": True},
        {"role": "active", "roots": {}, "instance": 5, "seq": 1, "with_owner": True},
        {"role": "active", "roots": {}, "instance": "i", "seq": 1, "with_owner": 1},
        {"role": "active", "roots": {}, "instance": "i", "seq": 1, "with_owner": True, "lag_s": "1"},
    ]
    for doc in bad:
        with pytest.raises(PeerError) as exc:
            dec_info(doc)
        assert exc.value.cause is Cause.SYNC_ERROR


def test_the_standbys_status_decodes_with_typed_causes() -> None:
    doc = {
        "role": "standby",
        "hostname": "hb",
        "in_sync": False,
        "lag_s": 2,
        "cause": "junk_file",
        "errors": [
            {"dir": "conf", "path": "a", "cause": "junk_file", "reason": "sed", "size": 0},
            {"dir": "conf", "path": "b", "cause": "newer_cause", "reason": "boom"},
        ],
    }
    st = dec_status(doc)
    assert st == PeerStatus(
        "standby",
        "hb",
        False,
        2.0,
        Cause.JUNK_FILE,
        (PathError("conf", "a", Cause.JUNK_FILE, "sed"), PathError("conf", "b", Cause.SYNC_ERROR, "newer_cause: boom")),
    )
    assert st.is_standby and type(st.cause) is Cause
    when = dec_status({"role": "standby", "last_sync_at": "2026-01-02T03:04:05.678Z", "pending": 3})
    assert (when.last_sync_at, when.pending) == ("2026-01-02T03:04:05.678Z", 3)
    assert dec_status({"last_sync_at": 5, "pending": True}) == PeerStatus(None)  # of the wrong type: not shown
    sized = dec_status({"errors": [{"dir": "c", "path": "p", "cause": "disk_full", "reason": "r", "size": 9}]})
    assert sized.errors == (PathError("c", "p", Cause.DISK_FULL, "r", 9),)
    odd = dec_status({"errors": [{"dir": "c", "path": "p", "cause": "disk_full", "reason": "r", "size": -1}]})
    assert odd.errors[0].size == 0  # unknown
    assert dec_status({"role": "active", "cause": "", "hostname": 5}) == PeerStatus("active", None)
    assert dec_status({"cause": "newer"}).cause is Cause.SYNC_ERROR
    for bad in ("x", {"errors": "x"}, {"errors": [{"dir": "c", "path": 1, "reason": "r"}]}, {"errors": [5]}):
        with pytest.raises(ValueError):
            dec_status(bad)
