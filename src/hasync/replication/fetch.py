"""What the standby fetches from the active: the listings of a Merkle walk, and files in frame streams.

`walk` compares a sync dir with the active's, level by level, asking only for the listings of the
directories whose hashes differ (POST /v1/tree); it returns the plan to apply.

`Fetcher.fetch` brings a list of files into an Applier. It asks the active for them (POST /v1/files,
docs/protocol.md §8) in batches of at most `batch_files` files and `batch_bytes` bytes; each batch is
one frame stream, read frame by frame:

    H  a file's header: path, metadata, resume offset  -> the Applier opens its temp file
    D  its data, in order                               -> written by the WritePipe's thread
    E  its digest; ok=false: it changed while read      -> finished (renamed with its batch), or asked again
    X  a file the active cannot read: cause, message    -> a FileError; "vanished": none (the feed deletes it)
    Z  the end of the stream

The partial temp files of big files an earlier transfer left are offered for resume
(replication/partials.py). A malformed or hostile stream is refused from where it goes wrong (the
files already whole are kept); a peer that goes away leaves a big file's temp file to be resumed.
Finished files are flushed by the Applier behind the stream (`Applier.flush_behind`). Files that kept
changing while read are asked for again, RETRIES times in all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from hasync.config import SyncDir
from hasync.errors import PathRefused
from hasync.halog import kv
from hasync.manifest import FILE, Entry, Plan, Tree, compare_entry
from hasync.peer.client import AgentClient
from hasync.peer.protocol import (
    F_DATA,
    F_END,
    F_ERR,
    F_HEAD,
    dec_entry,
    dec_failed,
    dec_head,
    dec_path,
    enc_path,
    unpack,
)
from hasync.replication.apply import Applier, Failures, FileWriter, Resume, WritePipe
from hasync.replication.partials import PartialTransfers
from hasync.tasks import Backoff

log = logging.getLogger("hasync.standby")

RETRIES = 5  # tries of a file that keeps changing while it is read
TREE_BATCH = 256  # directories listed per request of a Merkle walk

Progress = Callable[[dict[str, Any]], None]


@dataclass(eq=False)
class Fetcher:
    """Fetches files from the active (`client`) into Appliers, one sync dir at a time.

    `received(n)` is told of every file brought in, with the bytes this transfer carried for it.
    """

    client: AgentClient
    resumes: PartialTransfers
    batch_files: int
    batch_bytes: int
    received: Callable[[int], None]
    _writes: ThreadPoolExecutor | None = field(default=None, init=False)  # the WritePipe's thread

    def close(self) -> None:
        if self._writes is not None:
            self._writes.shutdown(wait=True)
            self._writes = None

    async def fetch(
        self,
        d: SyncDir,
        applier: Applier,
        paths: list[str],
        sizes: dict[str, int],
        failures: Failures,
        tally: dict[str, int],
        progress: Progress | None = None,
    ) -> list[str]:
        """Bring `paths` (with their `sizes`, to cut batches) into `applier`; return those that kept
        changing while they were read, RETRIES times. Failures go to `failures`; `tally` counts the
        files and bytes received (for `progress`). PeerError when the active cannot be asked."""
        if self._writes is None:  # its thread starts with the first write
            self._writes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hasync-write")
        t = _Transfer(self, d, applier, WritePipe(self._writes), failures, tally, progress)
        todo = list(paths)
        pause = Backoff(0.05, 0.4)  # a file changing while it is read: asked again a little later each time
        for attempt in range(RETRIES):
            t.retry = []
            for batch in self.batches(todo, sizes):
                await t.stream(batch)
            if not t.retry:
                return []
            todo = t.retry
            if attempt + 1 < RETRIES:
                await asyncio.sleep(pause.next())
        return todo

    def batches(self, paths: list[str], sizes: dict[str, int]) -> list[list[str]]:
        """`paths` in order, cut into batches of at most batch_files files and (but for a bigger file
        alone) batch_bytes bytes."""
        out: list[list[str]] = [[]]
        acc = 0
        for rel in paths:
            size = sizes.get(rel, 0)
            if out[-1] and (len(out[-1]) >= self.batch_files or acc + size > self.batch_bytes):
                out.append([])
                acc = 0
            out[-1].append(rel)
            acc += size
        return [b for b in out if b]


class _Transfer:
    """One `Fetcher.fetch`: its batches' frame streams, read one after the other, and the state carried
    from frame to frame."""

    def __init__(
        self,
        fetcher: Fetcher,
        d: SyncDir,
        applier: Applier,
        pipe: WritePipe,
        failures: Failures,
        tally: dict[str, int],
        progress: Progress | None,
    ) -> None:
        self.fetcher = fetcher
        self.resumes = fetcher.resumes
        self.d = d
        self.applier = applier
        self.pipe = pipe  # settled at the end of every stream
        self.failures = failures
        self.tally = tally
        self.progress = progress
        self.retry: list[str] = []  # files that changed while they were read: asked for again
        # The stream being read: the paths it was asked for, the resumes offered and not yet answered,
        # the file its data frames are for (None: they are dropped).
        self.wanted: set[str] = set()
        self.offers: dict[str, Resume] = {}
        self.writer: FileWriter | None = None

    async def stream(self, batch: list[str]) -> None:
        """Ask for `batch` in one frame stream and read it to its end."""
        d, resumes = self.d, self.resumes
        self.wanted = set(batch)
        self.offers = (  # the common case, no partial transfer: no thread hop on the change feed's path
            await asyncio.to_thread(resumes.offers, d.name, self.applier.fds.get, batch) if resumes.index else {}
        )
        offered = [(enc_path(rel), r.offset, r.hasher.digest()) for rel, r in self.offers.items()]
        tally, progress = self.tally, self.progress
        last_progress = 0.0
        try:
            async for kind, payload in self.fetcher.client.files(d.name, [enc_path(p) for p in batch], offered):
                if kind == F_DATA:  # the hot path: no call but the write
                    if self.writer is not None:
                        await self.pipe.put(self.writer, payload)
                        tally["bytes"] += len(payload)
                    if progress and time.monotonic() - last_progress > 0.1:
                        last_progress = time.monotonic()
                        progress(dict(tally, event="progress"))
                elif kind == F_HEAD:
                    self.head(payload)
                elif kind == F_END:
                    await self.end(payload)
                elif kind == F_ERR:
                    self.error(payload)
                # F_DONE: the last frame, the stream ends with it
        except (PathRefused, ValueError, TypeError) as exc:
            self.refuse(exc)  # a malformed or hostile stream: keep what was whole, refuse the rest
        except BaseException:
            self.interrupted()  # the peer went away, or we are stopping
            raise
        self.ended()
        self.applier.flush_behind(self._flush_failed)
        if progress:
            progress(dict(tally, event="progress"))

    def _flush_failed(self, rel: str, size: int, exc: OSError) -> None:
        self.failures.failed(self.d.name, rel, exc, size)

    def _asked(self, raw: object, what: str) -> str:
        rel = dec_path(raw)
        if rel not in self.wanted:
            raise PathRefused(f"the active {what} {rel!r}, which was not asked for")
        return rel

    def head(self, payload: bytes) -> None:
        """F_HEAD: open the file's temp file (or the partial one it resumes)."""
        head = dec_head(payload)
        rel = self._asked(head.raw, "sent")
        self.writer = None
        if head.meta is None:  # bad numbers: this file is refused, not the stream
            self.failures.refused(self.d.name, "", head.raw, head.refused or ValueError("refused"))
            return
        meta, offset = head.meta, head.offset
        offer = self.offers.pop(rel, None)
        if offset and (offer is None or offset != offer.offset):
            raise PathRefused(f"the active resumes {rel!r} at byte {offset!r}, which was not offered")
        if offer is not None and not offset:
            self.resumes.discard(self.d.name, rel, self.applier.fds.get)  # its file is not what we hold
        try:
            writer = self.applier.begin(rel, meta, offer if offset else None)
        except (OSError, PathRefused) as exc:
            self.resumes.discard(self.d.name, rel, self.applier.fds.get)
            self.failures.failed(self.d.name, rel, exc)
            return
        self.resumes.started(self.d.name, writer)
        self.writer = writer
        if offset:
            log.info("transfer resumed %s", kv(dir=self.d.name, path=rel, at=offset, size=meta.size))

    async def end(self, payload: bytes) -> None:
        """F_END: the file is finished (to be renamed with its batch), failed, or to be asked again."""
        digest, ok, _reason = unpack(payload)
        w = self.writer
        if w is not None:
            await self.pipe.drain()
            if w.error is not None:
                self.failures.failed(self.d.name, w.rel, w.error, w.meta.size)
                w.abort()
            elif not ok:  # it changed while the active read it
                w.abort()
                self.retry.append(w.rel)
            else:
                self._finish(w, digest)
            self.resumes.drop(self.d.name, w.rel)  # renamed into place, or its temp removed
            self.writer = None
        if self.applier.batch_full(self.fetcher.batch_files, self.fetcher.batch_bytes):
            self.applier.flush_behind(self._flush_failed)

    def _finish(self, w: FileWriter, digest: bytes) -> None:
        try:
            whole = w.finish(digest)
        except (OSError, PathRefused) as exc:
            self.failures.failed(self.d.name, w.rel, exc)
            return
        if not whole:  # not what the header and digest announced: asked again
            self.retry.append(w.rel)
            return
        self.tally["files"] += 1
        self.fetcher.received(w.size - w.start)

    def error(self, payload: bytes) -> None:
        """F_ERR: the active cannot read the file; "vanished": it is gone (the change feed brings that)."""
        failed = dec_failed(payload)
        rel = self._asked(failed.raw, "reported")
        if failed.vanished:
            return
        error = failed.error
        self.failures.fail(self.d.name, rel, error.cause, f"cannot be read on the active: {error.message}")

    def refuse(self, exc: Exception) -> None:
        """The stream broke the protocol: the file being received is dropped, the stream refused."""
        self.pipe.settle()
        if self.writer is not None:
            self.writer.abort()
            self.resumes.drop(self.d.name, self.writer.rel)
            self.writer = None
        self.failures.refused(self.d.name, "", b"(file stream)", exc)

    def interrupted(self) -> None:
        """The stream stopped (peer gone, cancelled): a big file's temp file stays to be resumed."""
        self.pipe.settle()
        if self.writer is not None:
            if self.resumes.holds(self.d.name, self.writer.rel):
                self.writer.keep()
            else:
                self.writer.abort()

    def ended(self) -> None:
        """After the stream: a file it cut off is dropped; offers it did not answer are of no more use."""
        self.pipe.settle()  # nothing may still write to the fd of a file the stream ended inside
        if self.writer is not None:
            self.writer.abort()
            self.resumes.drop(self.d.name, self.writer.rel)
            self.writer = None
        for rel in self.offers:  # offered, not sent (vanished, unreadable)
            self.resumes.discard(self.d.name, rel, self.applier.fds.get)


async def walk(
    client: AgentClient, dir_name: str, local: Tree, with_owner: bool, failures: Failures
) -> tuple[Plan, dict[str, int]]:
    """The Merkle walk of a sync dir whose root hash differs from the active's: level by level, the
    listings (POST /v1/tree) of the directories whose hashes differ, compared with `local`. Returns the
    plan (deepest deletions first, shallowest directories first) and the sizes of the files to fetch.
    A malformed listing, name or entry is refused on its own (`failures`); the rest is planned.
    PeerError when the active cannot be asked."""
    plan, sizes = Plan(), dict[str, int]()
    level: list[str] = [""]
    while level:
        nxt: list[str] = []
        for i in range(0, len(level), TREE_BATCH):
            chunk = level[i : i + TREE_BATCH]
            listings = await client.tree(dir_name, [enc_path(p) for p in chunk])
            for listing in listings:
                try:  # a malformed listing is refused on its own: the others are still applied
                    raw_dir, dir_hash, rows = listing
                    reldir = dec_path(raw_dir, allow_root=True)
                    if reldir not in chunk:
                        raise PathRefused(f"the active listed {reldir!r}, which was not asked for")
                    if dir_hash is not None and not isinstance(rows, list):
                        raise ValueError(f"the listing of {reldir!r} is not an array")
                except (PathRefused, ValueError, TypeError) as exc:
                    failures.refused(
                        dir_name, "", listing[0] if isinstance(listing, list) and listing else listing, exc
                    )
                    continue
                if dir_hash is None or (reldir in local.dirs and local.dir_hash(reldir) == dir_hash):
                    continue
                want, refused = _entries(dir_name, reldir, rows, failures)
                have = local.children(reldir)
                for name in sorted((want.keys() | have.keys()) - refused):
                    rel = f"{reldir}/{name}" if reldir else name
                    w = want.get(name)
                    went = w[0] if w else None
                    if went is not None and went.kind == FILE:
                        sizes[rel] = went.size
                    if compare_entry(rel, went, have.get(name), with_owner, plan):
                        sub_hash = w[1] if w else None
                        if rel not in local.dirs or local.dir_hash(rel) != sub_hash:
                            nxt.append(rel)
        level = nxt
    plan.delete.sort(key=lambda p: (-p.count("/"), p))
    plan.make.sort(key=lambda pe: pe[0].count("/"))
    sizes = {p: sizes[p] for p in plan.fetch}
    return plan, sizes


def _entries(
    dir_name: str, reldir: str, rows: list[Any], failures: Failures
) -> tuple[dict[str, tuple[Entry, bytes | None]], set[str]]:
    """The entries of one directory's listing by name (with a directory's hash); and the names whose
    entry was refused (the standby's copy of them is left alone). Bad names are refused and left out."""
    want: dict[str, tuple[Entry, bytes | None]] = {}
    refused: set[str] = set()
    for item in rows:
        try:
            raw_name, row = item
        except (ValueError, TypeError) as exc:
            failures.refused(dir_name, reldir, item, exc)
            continue
        try:
            name = dec_path(raw_name)
            if "/" in name:
                raise PathRefused(f"listing of {reldir!r} names {name!r}")
        except (PathRefused, ValueError, TypeError) as exc:
            failures.refused(dir_name, reldir, raw_name, exc)
            continue
        try:
            want[name] = dec_entry(row)
        except (ValueError, TypeError) as exc:
            failures.refused(dir_name, reldir, raw_name, exc)
            refused.add(name)
    return want, refused


@dataclass(frozen=True)
class Difference:
    """One path where this node's copy is not the peer's: `missing` here, `differs` (content or kind),
    `extra` (here only), `metadata` (mode, owner, mtime), `unreadable` (on the peer, so not copied);
    `size`: the peer's, for a file it has."""

    dir: str
    path: str
    what: str
    size: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {"dir": self.dir, "path": self.path, "what": self.what, "size": self.size}


async def differences(
    client: AgentClient, roots: dict[str, bytes | None], trees: dict[str, Tree | None], with_owner: bool
) -> list[Difference]:
    """What turning `trees` into the peer's (whose Merkle roots are `roots`) would change, found by the
    Merkle walk and applied nowhere: what a forced switchover's new active lacks, what a demoted node
    sets aside. A dir missing on one side is one difference at its root. PeerError when the peer fails."""
    out: list[Difference] = []
    for name in sorted(trees.keys() | roots.keys()):  # a dir only one side knows differs too
        tree, remote = trees.get(name), roots.get(name)
        if tree is None or remote is None:
            if (tree is None) != (remote is None):
                out.append(Difference(name, "", "missing" if tree is None else "extra"))
            continue
        if tree.root_hash() == remote:
            continue
        failures = Failures()
        plan, sizes = await walk(client, name, tree, with_owner, failures)
        out += [Difference(name, p, "differs" if tree.get(p) else "missing", sizes.get(p)) for p in plan.fetch]
        out += [Difference(name, p, "differs" if tree.get(p) else "missing") for p, _ in plan.make]
        out += [Difference(name, p, "metadata") for p, _ in plan.chmod]
        out += [Difference(name, p, "extra") for p in plan.delete]
        out += [Difference(name, p, "unreadable", e.size) for p, e in plan.errors]  # on the peer: not copied
        out += [Difference(name, e.path, "differs") for e in failures.errors.values()]
    return out
