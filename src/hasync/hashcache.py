"""The hash cache: a sync dir's `Tree` persisted (`<state_dir>/manifests/<dir>.msgpack`), so that a restarted
agent or a `sync --once` does not hash an unchanged tree again.

The file is one msgpack map ``{"v": 1, "with_owner": bool, "rows": [[relpath, *entry], ...]}``, parents
before children. It is written row by row through `fsutil.atomic_file`: a 100,000-file tree's rows are
never all held in memory at once (building them whole cost the standby ~30 MiB of peak memory at each
save). A damaged or unreadable cache only costs a re-hash.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import msgpack

from hasync.errors import ScanError
from hasync.fsutil import atomic_file
from hasync.manifest import DIR, ERROR, ERROR_FIELD, KIND_OF, Entry, Tree

# Names are bytes on Linux (str here with surrogateescape): surrogateescape writes the exact bytes.
_PACK = {"use_bin_type": True, "unicode_errors": "surrogateescape"}


def dump_to(tree: Tree, f: BinaryIO) -> None:
    """Write `tree` to `f`, one row at a time (the bytes `msgpack.packb` would give for the whole map)."""
    pk = msgpack.Packer(**_PACK)
    n = len(tree)
    f.write(pk.pack_map_header(3) + pk.pack("v") + pk.pack(1) + pk.pack("with_owner") + pk.pack(tree.with_owner))
    f.write(pk.pack("rows") + pk.pack_array_header(n))
    written = 0
    for rel, e in tree.items():
        row: list[object] = [rel, *e]
        row[ERROR_FIELD] = "" if e.error is None else str(e.error)  # the kind is its letter (a StrEnum)
        f.write(pk.pack(row))
        written += 1
    if written != n:  # the header promised n rows: a file with another count is not written at all
        raise ValueError(f"hash cache: {written} rows, {n} announced")


def dump(tree: Tree) -> bytes:
    buf = io.BytesIO()
    dump_to(tree, buf)
    return buf.getvalue()


def loads(data: bytes) -> Tree:
    doc = msgpack.unpackb(data, raw=False, unicode_errors="surrogateescape")
    tree = Tree(with_owner=bool(doc.get("with_owner")))
    dirs = tree.dirs
    for row in doc["rows"]:  # parents come before children (see Tree.items)
        rel = row[0]
        parent, _, name = rel.rpartition("/")
        kind = row[1] = KIND_OF[row[1]]
        row[ERROR_FIELD] = ScanError.from_text(row[ERROR_FIELD]) if kind is ERROR else None
        e = Entry(*row[1:])
        dirs.setdefault(parent, {})[name] = e
        if e.kind == ERROR:
            tree.error_paths.add(rel)
        if e.kind == DIR:
            dirs.setdefault(rel, {})
    return tree


def save(tree: Tree, path: Path) -> None:
    with atomic_file(path) as f:
        dump_to(tree, f)


def load(path: Path) -> Tree | None:
    try:
        return loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, IndexError, TypeError, msgpack.UnpackException):
        return None  # a damaged cache only costs a re-hash
