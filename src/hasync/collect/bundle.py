"""The bundle itself: both nodes' parts gathered, the size guard applied, the ``.tar.gz`` written atomically."""

from __future__ import annotations

import asyncio
import hashlib
import io
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from hasync import __version__
from hasync.clock import iso
from hasync.collect.local import local_part
from hasync.collect.part import NodePart, ProgressFn, json_bytes
from hasync.collect.peer import peer_part
from hasync.collect.spool import Trim, share
from hasync.collect.window import Window
from hasync.config import Config
from hasync.errors import UsageError
from hasync.fsutil import atomic_file
from hasync.masking import Masker

FORMAT_VERSION = 1
DEFAULT_MAX_BYTES = 200_000_000
MANIFEST_ROOM = 16 << 10  # kept free under max_bytes for the manifest itself


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]
    warnings: tuple[str, ...]


def default_name(node: str, at: datetime) -> str:
    return f"hasync-bundle-{node}-{at.astimezone():%Y%m%dT%H%M%S}.tar.gz"


def target_path(output: str | None, node: str, at: datetime) -> Path:
    """Where the bundle goes: `output` as a file, or the default name in `output` (a directory) or the cwd."""
    if output is None:
        return Path.cwd() / default_name(node, at)
    p = Path(output)
    if p.is_dir():
        return p / default_name(node, at)
    if output.endswith("/") or not p.parent.is_dir():
        raise UsageError(f"-o: directory {p if output.endswith('/') else p.parent} does not exist")
    return p


async def collect(
    cfg: Config,
    window: Window,
    target: Path,
    *,
    role: str | None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    alarm: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
) -> Bundle:
    """Gather both nodes' parts for `window` (this node's clock) and write the bundle to `target` atomically.
    `role` is this node's, as its role provider says (None: it could not say)."""
    report: ProgressFn = progress or (lambda what, done, total: None)
    masker = cfg.masker()
    spool_dir = target.parent
    results = await asyncio.gather(
        local_part(cfg, window, spool_dir, masker, report, role),
        peer_part(cfg, window, spool_dir, masker, report),
        return_exceptions=True,
    )
    parts = [r for r in results if isinstance(r, NodePart)]
    try:
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return await asyncio.to_thread(_write, cfg, window, target, parts, max_bytes, alarm, masker, report)
    finally:
        for p in parts:
            if p.spool is not None:
                p.spool.close()


def _write(
    cfg: Config,
    window: Window,
    target: Path,
    parts: list[NodePart],
    max_bytes: int,
    alarm: dict[str, Any] | None,
    masker: Masker,
    report: ProgressFn,
) -> Bundle:
    # Error texts come from elsewhere (the peer, drivers): masked like everything else.
    notes = [masker.text(n) for p in parts for n in p.notes]
    warnings = [masker.text(w) for p in parts for w in p.warnings]
    others = sum(len(b) for p in parts for b in p.docs.values())
    logged = [p for p in parts if p.spool is not None]
    budgets = share([p.spool.size for p in logged if p.spool is not None], max_bytes - others - MANIFEST_ROOM)
    trims: dict[str, Trim] = {}
    guard = {"max_bytes": max_bytes, "dropped_lines": 0, "dropped_entries": 0, "dropped_bytes": 0}
    for p, budget in zip(logged, budgets, strict=True):
        assert p.spool is not None
        t = p.spool.trim(budget, p.name)
        trims[p.name] = t
        p.log.update(entries=p.spool.entries, lines=p.spool.lines, bytes=p.spool.size)
        if t.dropped_bytes:
            p.log.update(
                dropped_lines=t.dropped_lines, dropped_entries=t.dropped_entries, dropped_bytes=t.dropped_bytes
            )
            guard["dropped_lines"] += t.dropped_lines
            guard["dropped_entries"] += t.dropped_entries
            guard["dropped_bytes"] += t.dropped_bytes
            warnings.append(
                f"{p.name}: size guard ({max_bytes} bytes): the {t.dropped_lines} oldest log lines "
                f"({t.dropped_bytes} bytes) left out"
            )
    total = others + sum(t.size for t in trims.values())
    done = 0

    def moved(n: int) -> None:
        nonlocal done
        done += n
        report("bundle", done, total)

    files: list[dict[str, Any]] = []
    now = time.time()
    # Mode 0o666 as open() gives: the umask decides, as for any file the user writes.
    with (
        atomic_file(target, mode=0o666) as raw,
        tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as tar,
    ):

        def add(name: str, size: int, src: IO[bytes], digest: Callable[[], str]) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = size, int(now), 0o644
            tar.addfile(info, src)
            files.append({"path": name, "size": size, "sha256": digest()})

        for p in parts:
            if p.spool is not None:
                reader = p.spool.reader(trims[p.name], moved)
                add(f"{p.name}/ha.log", trims[p.name].size, reader, reader.sha256.hexdigest)  # type: ignore[arg-type]
            for doc_name in ("alarms.json", "status.json", "config.toml"):
                if doc_name in p.docs:
                    data = p.docs[doc_name]
                    add(f"{p.name}/{doc_name}", len(data), io.BytesIO(data), hashlib.sha256(data).hexdigest)
                    moved(len(data))
        manifest = {
            "format": FORMAT_VERSION,
            "hasync_version": __version__,
            "created_at": iso(now, "milliseconds"),
            "created_on": cfg.node.name,
            "window": window.as_json(),
            "alarm": alarm,
            "nodes": [p.as_json() for p in parts],
            "clock_offset": next((p.offset.as_json() for p in parts if not p.local and p.offset is not None), None),
            "size_guard": guard,
            "files": files,
            "notes": notes + warnings,
        }
        data = json_bytes(manifest)
        info = tarfile.TarInfo("manifest.json")
        info.size, info.mtime, info.mode = len(data), int(now), 0o644
        tar.addfile(info, io.BytesIO(data))
    return Bundle(target, manifest, tuple(warnings))
