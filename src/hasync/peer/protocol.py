"""Wire formats shared by the agent server and the peer client (docs/protocol.md)."""

from __future__ import annotations

import os
from typing import Any

import msgpack

from hasync.fsutil import validate_relpath
from hasync.manifest import DIR, Entry

API = "/v1"
MSGPACK = "application/x-msgpack"
FRAMES = "application/x-hasync-frames"
AUTH_HEADER = "Authorization"

# File stream frames (peer/frames.py: 1 byte type, 4 bytes big-endian payload length, payload).
F_HEAD = b"H"  # msgpack [path, kind, mode, size, mtime_ns, uid, gid]
F_DATA = b"D"  # raw bytes of the file, in order
F_END = b"E"  # msgpack [digest, ok, reason]: ok false = changed while read, retry
F_ERR = b"X"  # msgpack [path, cause, message]: could not be read at all
F_DONE = b"Z"  # empty: end of the stream

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


def dec_path(raw: bytes, allow_root: bool = False) -> str:
    """A path from the wire, validated (SPEC §4): raises PathRefused when unsafe."""
    if not isinstance(raw, bytes):
        from hasync.errors import PathRefused

        raise PathRefused(f"path {raw!r} is not bytes")
    path = os.fsdecode(raw)
    if allow_root and path == "":
        return path
    return validate_relpath(path)


def enc_entry(e: Entry, dir_hash: bytes | None = None) -> list[Any]:
    row: list[Any] = [e.kind, e.mode, e.size, e.mtime_ns, e.digest, enc_path(e.link), e.uid, e.gid, e.error]
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
    if kind not in ("f", "d", "l", "e"):
        raise ValueError(f"bad entry kind {kind!r:.20}")
    mode, size, mtime_ns, uid, gid = dec_meta(mode, size, mtime_ns, uid, gid)
    if not isinstance(digest, bytes) or len(digest) not in (0, DIGEST_LEN):
        raise ValueError(f"digest {digest!r:.40} is not {DIGEST_LEN} bytes")
    if not isinstance(link, bytes) or len(link) > MAX_LINK or b"\0" in link or (kind == "l" and not link):
        raise ValueError(f"link target {link!r:.40} is not 1..{MAX_LINK} bytes without NUL")
    if not isinstance(error, str) or len(error) > MAX_ERROR:
        raise ValueError(f"error {error!r:.40} is not a string of at most {MAX_ERROR} characters")
    entry = Entry(kind, mode, size, mtime_ns, digest, os.fsdecode(link), uid, gid, 0, error)
    if kind == "e":
        entry.cause  # noqa: B018 -- raises ValueError unless it names a cause of SPEC §3
    dir_hash = row[9] if kind == DIR and len(row) > 9 else None
    if dir_hash is not None and (not isinstance(dir_hash, bytes) or len(dir_hash) != DIR_HASH_LEN):
        raise ValueError(f"dir hash {dir_hash!r:.40} is not {DIR_HASH_LEN} bytes")
    return entry, dir_hash


MAX_SEQ = 2**63 - 1


def dec_changes(doc: Any) -> dict[str, Any]:
    """A `/v1/changes` answer (section 7.4), its shape checked: raises ValueError. Each change is
    `[dir, path, entry or nil]`; its path and entry are checked one by one (dec_path, dec_entry) by the
    caller, so that one bad entry refuses that entry only, while a feed of the wrong shape is refused whole."""
    if not isinstance(doc, dict):
        raise ValueError(f"change feed {doc!r:.60} is not a map")
    missing = [k for k in ("instance", "seq", "reset", "changes", "roots") if k not in doc]
    if missing:
        raise ValueError(f"change feed lacks {', '.join(missing)}")
    if not isinstance(doc["instance"], str) or type(doc["reset"]) is not bool:
        raise ValueError(f"change feed instance {doc['instance']!r:.40} or reset {doc['reset']!r:.20} malformed")
    _int(doc["seq"], 0, MAX_SEQ, "change feed seq")
    roots = doc["roots"]
    if not isinstance(roots, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, bytes)) for k, v in roots.items()
    ):
        raise ValueError(f"change feed roots {roots!r:.60} is not a map of dir to hash")
    changes = doc["changes"]
    if not isinstance(changes, list):
        raise ValueError(f"change feed changes {changes!r:.60} is not an array")
    for change in changes:
        if not isinstance(change, list) or len(change) != 3 or not isinstance(change[0], str):
            raise ValueError(f"change {change!r:.60} is not an array [dir, path, entry or nil]")
    return doc


def dec_head(payload: bytes) -> tuple[bytes, Entry | ValueError, int]:
    """A file header (F_HEAD, section 8): (raw path, its metadata or why it is refused, resume offset).
    The path is decoded by the caller (dec_path), so that a bad number refuses that file only."""
    head = unpack(payload)
    if not isinstance(head, list) or not 7 <= len(head) <= 8:
        raise ValueError(f"file header {head!r:.60} is not an array of 7 or 8 fields")
    raw, kind, mode, size, mtime_ns, uid, gid, *more = head
    try:
        if kind != "f":
            raise ValueError(f"file header kind {kind!r:.20} is not 'f'")
        mode, size, mtime_ns, uid, gid = dec_meta(mode, size, mtime_ns, uid, gid)
        offset = _int(more[0], 0, size, "resume offset") if more else 0
    except ValueError as exc:
        return raw, exc, 0
    return raw, Entry("f", mode, size, mtime_ns, uid=uid, gid=gid), offset
