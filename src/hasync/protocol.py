"""Wire formats shared by the agent server and the peer client (docs/protocol.md)."""

from __future__ import annotations

import os
import struct
from typing import Any

import msgpack

from hasync.fsutil import validate_relpath
from hasync.manifest import DIR, Entry

API = "/v1"
MSGPACK = "application/x-msgpack"
FRAMES = "application/x-hasync-frames"
AUTH_HEADER = "Authorization"

# File stream frames: 1 byte type, 4 bytes big-endian payload length, payload.
FRAME_HEADER = struct.Struct(">cI")
F_HEAD = b"H"  # msgpack [path, kind, mode, size, mtime_ns, uid, gid]
F_DATA = b"D"  # raw bytes of the file, in order
F_END = b"E"  # msgpack [digest, ok, reason]: ok false = changed while read, retry
F_ERR = b"X"  # msgpack [path, cause, message]: could not be read at all
F_DONE = b"Z"  # empty: end of the stream
MAX_FRAME = 4 << 20


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return FRAME_HEADER.pack(kind, len(payload)) + payload


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


def dec_entry(row: list[Any]) -> tuple[Entry, bytes | None]:
    kind, mode, size, mtime_ns, digest, link, uid, gid, error = row[:9]
    if kind not in ("f", "d", "l", "e") or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise ValueError(f"bad entry {row[:3]!r}")
    entry = Entry(
        kind, mode, int(size), int(mtime_ns), bytes(digest), os.fsdecode(link), int(uid), int(gid), 0, str(error)
    )
    return entry, (row[9] if kind == DIR and len(row) > 9 else None)
