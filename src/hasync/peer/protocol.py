"""Wire formats shared by the agent server and the peer client (docs/protocol.md)."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import msgpack

from hasync.errors import Cause, MalformedAnswer, PathRefused, ScanError, cause_and_message, cause_of
from hasync.fsutil import validate_relpath
from hasync.manifest import DIR, ERROR, FILE, KIND_OF, LINK, Entry
from hasync.peer.models import Change, ChangeFeed, FileFailed, FileHead, PathError, PeerInfo, PeerStatus

API = "/v1"
MSGPACK = "application/x-msgpack"
FRAMES = "application/x-hasync-frames"
AUTH_HEADER = "Authorization"

# File stream frames (peer/frames.py: 1 byte type, 4 bytes big-endian payload length, payload).
F_HEAD = b"H"  # msgpack [path, kind, mode, size, mtime_ns, uid, gid]
F_DATA = b"D"  # raw bytes of the file, in order
F_END = b"E"  # msgpack [digest, ok, reason]: ok false = changed while read, retry
F_ERR = b"X"  # msgpack [path, cause, message]: could not be read at all (message VANISHED: gone)
F_DONE = b"Z"  # empty: end of the stream
# F_ERR's message for a file gone since it was listed (with cause sync_error): the wire's one signal in
# text, read by dec_failed into FileFailed.vanished.
VANISHED = "vanished"

# Log stream frames of GET /v1/collect/logs (Content-Type FRAMES), the same framing.
L_DATA = b"D"  # UTF-8 log text, masked; frames split anywhere, even inside a character
L_PROGRESS = b"P"  # msgpack {"read": int, "total": int}: on-disk bytes of the files read so far
L_DONE = b"Z"  # msgpack: the cut's stats (logcut.CutStats as JSON); the end of the stream
L_ERR = b"X"  # msgpack {"message": str}: the cut failed; the stream ends
FRAME_DATA_MAX = 256 << 10  # the largest L_DATA payload a sender writes


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def enc_path(path: str) -> bytes:
    return os.fsencode(path)


def dec_path(raw: object, allow_root: bool = False) -> str:
    """A path from the wire, validated (SPEC §4): raises PathRefused when unsafe."""
    if not isinstance(raw, bytes):
        raise PathRefused(f"path {raw!r} is not bytes")
    path = os.fsdecode(raw)
    if allow_root and path == "":
        return path
    return validate_relpath(path)


def enc_entry(e: Entry, dir_hash: bytes | None = None) -> list[Any]:
    error = "" if e.error is None else str(e.error)
    row: list[Any] = [e.kind.value, e.mode, e.size, e.mtime_ns, e.digest, enc_path(e.link), e.uid, e.gid, error]
    if e.kind == DIR:
        row.append(dir_hash)
    return row


# Numeric ranges a receiver accepts (docs/protocol.md §5): what the system calls take, so that a
# hostile or broken peer gets the entry refused, never an OverflowError deep in the apply.
MAX_ID = 2**32 - 2  # uid_t/gid_t; 2**32 - 1 is (uid_t)-1, "leave unchanged" to chown
MAX_MODE = 0o7777  # permission bits only: the type is the entry's kind
MAX_SIZE = 2**63 - 1  # off_t
MIN_NS, MAX_NS = -(2**63), 2**63 - 1  # a signed 64-bit ns count (years 1677 to 2262)
MAX_LINK = 4095  # PATH_MAX - 1: the longest target symlink(2) takes
MAX_ERROR = 4096
DIGEST_LEN = 32  # BLAKE3
DIR_HASH_LEN = 16


def _int(value: Any, lo: int, hi: int, what: str) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError(f"{what} {value!r:.40} out of range {lo}..{hi}")
    return value


def dec_meta(mode: Any, size: Any, mtime_ns: Any, uid: Any, gid: Any) -> tuple[int, int, int, int, int]:
    """The numbers of an entry or a file header, checked against what the system calls take."""
    return (
        _int(mode, 0, MAX_MODE, "mode"),
        _int(size, 0, MAX_SIZE, "size"),
        _int(mtime_ns, MIN_NS, MAX_NS, "mtime_ns"),
        _int(uid, 0, MAX_ID, "uid"),
        _int(gid, 0, MAX_ID, "gid"),
    )


def dec_entry(row: list[Any]) -> tuple[Entry, bytes | None]:
    """An entry from the wire (section 5), every field checked: raises ValueError or TypeError."""
    if not isinstance(row, list) or len(row) < 9:
        raise ValueError(f"entry {row!r:.60} is not an array of 9 or 10 fields")
    kind, mode, size, mtime_ns, digest, link, uid, gid, error = row[:9]
    if not isinstance(kind, str) or kind not in KIND_OF:
        raise ValueError(f"bad entry kind {kind!r:.20}")
    kind = KIND_OF[kind]
    mode, size, mtime_ns, uid, gid = dec_meta(mode, size, mtime_ns, uid, gid)
    if not isinstance(digest, bytes) or len(digest) not in (0, DIGEST_LEN):
        raise ValueError(f"digest {digest!r:.40} is not {DIGEST_LEN} bytes")
    if not isinstance(link, bytes) or len(link) > MAX_LINK or b"\0" in link or (kind is LINK and not link):
        raise ValueError(f"link target {link!r:.40} is not 1..{MAX_LINK} bytes without NUL")
    if not isinstance(error, str) or len(error) > MAX_ERROR:
        raise ValueError(f"error {error!r:.40} is not a string of at most {MAX_ERROR} characters")
    # An unknown cause is sync_error, its text kept (errors.cause_of): the same rule as F_ERR and status.
    scan_error = ScanError.from_text(error) if kind is ERROR else None
    entry = Entry(kind, mode, size, mtime_ns, digest, os.fsdecode(link), uid, gid, 0, scan_error)
    dir_hash = row[9] if kind == DIR and len(row) > 9 else None
    if dir_hash is not None and (not isinstance(dir_hash, bytes) or len(dir_hash) != DIR_HASH_LEN):
        raise ValueError(f"dir hash {dir_hash!r:.40} is not {DIR_HASH_LEN} bytes")
    return entry, dir_hash


MAX_SEQ = 2**63 - 1


def dec_info(doc: Any) -> PeerInfo:
    """A `/v1/info` answer (section 7.2), checked. A malformed answer is the peer's fault:
    MalformedAnswer (a PeerError, sync_error), handled as any failure to talk to it."""
    try:
        if not isinstance(doc, dict):
            raise ValueError(f"{doc!r:.60} is not a map")
        role, node, hostname, at = doc.get("role"), doc.get("node"), doc.get("hostname"), doc.get("time")
        info = PeerInfo(
            node if isinstance(node, str) else "",
            role if isinstance(role, str) else "",  # anything but "active" is told as the wrong role
            hostname if isinstance(hostname, str) else None,
            float(at) if isinstance(at, int | float) else None,
        )
        if "roots" not in doc:  # a standby's answer
            return info
        instance, seq, with_owner, lag = doc.get("instance"), doc.get("seq"), doc.get("with_owner"), doc.get("lag_s")
        if not isinstance(instance, str) or type(with_owner) is not bool:
            raise ValueError(f"instance {instance!r:.40} or with_owner {with_owner!r:.20} malformed")
        if lag is not None and (not isinstance(lag, int | float) or isinstance(lag, bool)):
            raise ValueError(f"lag_s {lag!r:.40} is not a number")
        return replace(
            info,
            instance=instance,
            seq=_int(seq, 0, MAX_SEQ, "seq"),
            roots=_roots(doc["roots"]),
            with_owner=with_owner,
            lag_s=None if lag is None else float(lag),
        )
    except ValueError as exc:
        raise MalformedAnswer(f"{API}/info", str(exc)) from exc


def _roots(roots: Any) -> dict[str, bytes | None]:
    if not isinstance(roots, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, bytes)) for k, v in roots.items()
    ):
        raise ValueError(f"roots {roots!r:.60} is not a map of dir to hash")
    return roots


def dec_changes(doc: Any) -> ChangeFeed:
    """A `/v1/changes` answer (section 7.4), its shape checked: raises ValueError. Each change is
    `[dir, path, entry or nil]`; its path and entry are checked one by one (dec_path, dec_entry), so
    that one bad entry refuses that change only (`Change.refused`), while a feed of the wrong shape is
    refused whole."""
    if not isinstance(doc, dict):
        raise ValueError(f"change feed {doc!r:.60} is not a map")
    missing = [k for k in ("instance", "seq", "reset", "changes", "roots") if k not in doc]
    if missing:
        raise ValueError(f"change feed lacks {', '.join(missing)}")
    if not isinstance(doc["instance"], str) or type(doc["reset"]) is not bool:
        raise ValueError(f"change feed instance {doc['instance']!r:.40} or reset {doc['reset']!r:.20} malformed")
    seq = _int(doc["seq"], 0, MAX_SEQ, "change feed seq")
    try:
        roots = _roots(doc["roots"])
    except ValueError:
        raise ValueError(f"change feed roots {doc['roots']!r:.60} is not a map of dir to hash") from None
    changes = doc["changes"]
    if not isinstance(changes, list):
        raise ValueError(f"change feed changes {changes!r:.60} is not an array")
    for change in changes:
        if not isinstance(change, list) or len(change) != 3 or not isinstance(change[0], str):
            raise ValueError(f"change {change!r:.60} is not an array [dir, path, entry or nil]")
    return ChangeFeed(doc["instance"], seq, doc["reset"], tuple(_change(*c) for c in changes), roots)


def _change(dir_name: str, raw: Any, row: Any) -> Change:
    try:
        path = dec_path(raw, allow_root=True)
        entry = dec_entry(row)[0] if row is not None else None
    except (PathRefused, ValueError, TypeError) as exc:
        return Change(dir_name, raw, refused=exc)
    return Change(dir_name, raw, path, entry)


def enc_head(path: str, st_mode: int, size: int, mtime_ns: int, uid: int, gid: int, offset: int | None) -> bytes:
    """F_HEAD's payload; `offset` (resume) only for a standby that offered one."""
    head: list[Any] = [enc_path(path), FILE.value, st_mode & MAX_MODE, size, mtime_ns, uid, gid]
    if offset is not None:
        head.append(offset)
    return pack(head)


def dec_head(payload: bytes) -> FileHead:
    """A file header (F_HEAD, section 8): its metadata, or why it is refused, and the resume offset.
    The path is decoded by the caller (dec_path), so that a bad number refuses that file only; a header
    of the wrong shape raises ValueError (the stream is refused)."""
    head = unpack(payload)
    if not isinstance(head, list) or not 7 <= len(head) <= 8:
        raise ValueError(f"file header {head!r:.60} is not an array of 7 or 8 fields")
    raw, kind, mode, size, mtime_ns, uid, gid, *more = head
    try:
        if kind != FILE.value:
            raise ValueError(f"file header kind {kind!r:.20} is not 'f'")
        mode, size, mtime_ns, uid, gid = dec_meta(mode, size, mtime_ns, uid, gid)
        offset = _int(more[0], 0, size, "resume offset") if more else 0
    except ValueError as exc:
        return FileHead(raw, None, exc)
    return FileHead(raw, Entry(FILE, mode, size, mtime_ns, uid=uid, gid=gid), None, offset)


def enc_failed(path: str, error: ScanError) -> bytes:
    """F_ERR's payload: a requested file that could not be read."""
    return pack([enc_path(path), error.cause.value, error.message])


def enc_vanished(path: str) -> bytes:
    """F_ERR's payload for a requested file that is gone (or not a regular file any more)."""
    return enc_failed(path, ScanError(Cause.SYNC_ERROR, VANISHED))


def dec_failed(payload: bytes) -> FileFailed:
    """F_ERR (section 8). An unknown cause is sync_error with its text kept (errors.cause_and_message)."""
    failed = unpack(payload)
    if not isinstance(failed, list) or len(failed) != 3:
        raise ValueError(f"file error {failed!r:.60} is not an array [path, cause, message]")
    raw, cause, message = failed
    message = message if isinstance(message, str) else repr(message)[:MAX_ERROR]
    if message == VANISHED:
        return FileFailed(raw, ScanError(Cause.SYNC_ERROR, message), vanished=True)
    return FileFailed(raw, ScanError(*cause_and_message(cause, message)))


def dec_status(doc: Any) -> PeerStatus:
    """The standby's brief status (section 7.6), as the active's check reads it: raises ValueError when
    malformed. A cause it names that this version does not know is sync_error, its text kept."""
    if not isinstance(doc, dict):
        raise ValueError(f"status {doc!r:.60} is not a map")
    role, hostname, in_sync, lag, cause = (doc.get(k) for k in ("role", "hostname", "in_sync", "lag_s", "cause"))
    last, pending, errors = doc.get("last_sync_at"), doc.get("pending"), doc.get("errors", [])
    if not isinstance(errors, list):
        raise ValueError(f"status errors {errors!r:.60} is not an array")
    return PeerStatus(
        role if isinstance(role, str) else None,
        hostname if isinstance(hostname, str) else None,
        in_sync if isinstance(in_sync, bool) else None,
        float(lag) if isinstance(lag, int | float) else None,
        None if not cause else cause_of(cause),
        tuple(_path_error(e) for e in errors),
        last_sync_at=last if isinstance(last, str) else None,
        pending=pending if type(pending) is int else None,
    )


def _path_error(e: Any) -> PathError:
    if not isinstance(e, dict) or not all(isinstance(e.get(k), str) for k in ("dir", "path", "reason")):
        raise ValueError(f"status error {e!r:.60} is not a map of dir, path, cause and reason")
    cause, reason = cause_and_message(e.get("cause"), e["reason"])
    size = e.get("size", 0)
    return PathError(e["dir"], e["path"], cause, reason, size if type(size) is int and size >= 0 else 0)
