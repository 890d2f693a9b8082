"""replication/fetch.py: the standby's fetch of files, over the in-memory transport into a real Applier
on a tmp dir. The active is a handler that answers POST /v1/files with a scripted frame stream."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import msgpack
import pytest

from hasync.backup import BackupSets
from hasync.config import SyncDir
from hasync.errors import Cause, PeerAgentDown, PeerError
from hasync.fsutil import is_tmp_name, tmp_name
from hasync.manifest import DIR, FILE, Entry, Tree
from hasync.peer.client import AgentClient
from hasync.peer.frames import MAX_FRAME, frame, header
from hasync.peer.protocol import F_DATA, F_DONE, F_END, F_ERR, F_HEAD, enc_entry
from hasync.peer.transport import MemoryRequest, MemoryResponse, MemoryTransport
from hasync.replication import partials
from hasync.replication.apply import Applier, Failures
from hasync.replication.fetch import RETRIES, Fetcher, walk
from hasync.replication.partials import Partial, PartialTransfers

MTIME = 1_700_000_000_123_456_789


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def head(rel: str, size: int, mode: int = 0o640, offset: int | None = None, **over: Any) -> bytes:
    row: list[Any] = [os.fsencode(rel), "f", mode, size, MTIME, os.getuid(), os.getgid()]
    if offset is not None:
        row.append(offset)
    for i, k in enumerate(("path", "kind", "mode", "size", "mtime_ns", "uid", "gid")):
        if k in over:
            row[i] = over[k]
    return frame(F_HEAD, pack(row))


def file_frames(
    rel: str, data: bytes, *, ok: bool = True, offset: int | None = None, digest: bytes | None = None, chunk: int = 7
) -> bytes:
    """The frames the active sends for one file (from `offset`, the digest still the whole file's)."""
    start = offset or 0
    body = b"".join(frame(F_DATA, data[i : i + chunk]) for i in range(start, len(data), chunk))
    end = pack([blake3.blake3(data).digest() if digest is None else digest, ok, None if ok else "changed"])
    return head(rel, len(data), offset=offset) + body + frame(F_END, end)


def error_frame(rel: str, cause: str, msg: str) -> bytes:
    return frame(F_ERR, pack([os.fsencode(rel), cause, msg]))


async def pieces(data: bytes, size: int = 5) -> AsyncIterator[bytes]:
    """The stream in small pieces, as a socket gives it."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


@dataclass
class Env:
    """A standby's sync dir, its Applier's parts and a Fetcher whose active is `serve(request, n)`
    (n: the how-manieth request) returning the frame stream (bytes, without the final Z unless it
    returns a cut stream: `cut=True`)."""

    base: Path
    serve: Callable[[dict[str, Any], int], bytes] = lambda body, n: b""
    cut: bool = False
    batch_files: int = 100
    batch_bytes: int = 1 << 30
    bodies: list[dict[str, Any]] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    tally: dict[str, int] = field(default_factory=lambda: {"files": 0, "bytes": 0})
    failures: Failures = field(default_factory=Failures)

    def __post_init__(self) -> None:
        self.root = self.base / "data"
        self.root.mkdir(exist_ok=True)
        self.d = SyncDir(name="data", path=self.root)
        self.tree = Tree()
        self.backups = BackupSets(self.base / "backup", "FlinkServer")
        self.resumes = PartialTransfers(self.base / "state")
        self.resumes.load({"data"})

    async def _handler(self, req: MemoryRequest) -> MemoryResponse:
        assert (req.method, req.path) == ("POST", "/v1/files")
        body = msgpack.unpackb(req.body)
        self.bodies.append(body)
        stream = self.serve(body, len(self.bodies))
        return MemoryResponse(200, pieces(stream if self.cut else stream + frame(F_DONE)))

    def fetch(self, paths: list[str], sizes: dict[str, int] | None = None) -> list[str]:
        """Fetch `paths` as the standby's apply does (then flush, finish, close); the paths still busy."""

        async def run() -> list[str]:
            client = AgentClient("http://active:1", "t", 5.0, "node-a", transport=MemoryTransport(self._handler))
            fetcher = Fetcher(client, self.resumes, self.batch_files, self.batch_bytes, self.received.append)
            applier = Applier(self.d, self.tree, self.backups, as_root=False, fsync_each=False)
            try:
                busy = await fetcher.fetch(self.d, applier, paths, sizes or {}, self.failures, self.tally)
                await applier.flushed()
                applier.finish()
                return busy
            finally:
                await applier.aclose()
                fetcher.close()

        return asyncio.run(run())

    def temps(self) -> list[str]:
        return sorted(
            os.path.relpath(os.path.join(top, n), self.root)
            for top, _, names in os.walk(self.root)
            for n in names
            if is_tmp_name(n)
        )

    def errors(self) -> dict[str, tuple[Cause, str]]:
        return {path: (e.cause, e.message) for (_, path), e in self.failures.errors.items()}


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


A = b"alpha " * 20
B = b"bravo, in a sub directory"


def test_whole_files_arrive_with_their_metadata(env: Env) -> None:
    env.serve = lambda body, n: file_frames("a", A) + file_frames("sub/b", B)
    assert env.fetch(["a", "sub/b"]) == []
    assert (env.root / "a").read_bytes() == A and (env.root / "sub" / "b").read_bytes() == B
    st = os.stat(env.root / "a")
    assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o640, MTIME)
    e = env.tree.get("a")
    assert e is not None and e.kind == FILE and e.digest == blake3.blake3(A).digest() and e.ino == st.st_ino
    assert env.tally == {"files": 2, "bytes": len(A) + len(B)} and env.received == [len(A), len(B)]
    assert env.bodies == [{"dir": "data", "paths": [b"a", b"sub/b"]}]  # no partial: no resume offers
    assert env.temps() == [] and env.failures.errors == {}


def test_batches_are_cut_by_files_and_bytes(env: Env) -> None:
    env.batch_files, env.batch_bytes = 2, 100
    env.serve = lambda body, n: b"".join(file_frames(os.fsdecode(p), b"x") for p in body["paths"])
    assert env.fetch(["a", "b", "c", "d", "e"], {"c": 150}) == []
    assert [b["paths"] for b in env.bodies] == [[b"a", b"b"], [b"c"], [b"d", b"e"]]
    assert sorted(os.listdir(env.root)) == ["a", "b", "c", "d", "e"]


def test_a_file_changed_while_read_is_asked_for_again(env: Env) -> None:
    def serve(body: dict[str, Any], n: int) -> bytes:
        if n == 1:
            return file_frames("a", b"torn version", ok=False) + file_frames("b", B)
        return file_frames("a", A)

    env.serve = serve
    assert env.fetch(["a", "b"]) == []
    assert [b["paths"] for b in env.bodies] == [[b"a", b"b"], [b"a"]]
    assert (env.root / "a").read_bytes() == A and (env.root / "b").read_bytes() == B
    assert env.temps() == [] and env.tally["files"] == 2


def test_a_file_whose_bytes_do_not_match_its_digest_is_asked_for_again(env: Env) -> None:
    env.serve = lambda body, n: file_frames("a", A, digest=b"\0" * 32 if n == 1 else None)
    assert env.fetch(["a"]) == []
    assert len(env.bodies) == 2 and (env.root / "a").read_bytes() == A


def test_a_file_that_keeps_changing_is_returned_busy_after_the_retries(env: Env) -> None:
    env.serve = lambda body, n: file_frames("a", A, ok=False)
    assert env.fetch(["a"]) == ["a"]
    assert len(env.bodies) == RETRIES
    assert not (env.root / "a").exists() and env.temps() == []
    assert env.failures.errors == {}  # the standby decides when busy becomes an error


def test_error_frames_are_failures_with_their_causes(env: Env) -> None:
    env.serve = lambda body, n: (
        error_frame("p", "permission_denied", "Permission denied")
        + error_frame("j", "junk_file", "Permission denied")
        + error_frame("u", "no_such_cause", "what")
        + file_frames("ok", A)
    )
    assert env.fetch(["p", "j", "u", "ok"]) == []
    assert env.errors() == {
        "p": (Cause.PERMISSION_DENIED, "cannot be read on the active: Permission denied"),
        "j": (Cause.JUNK_FILE, "cannot be read on the active: Permission denied"),
        "u": (Cause.SYNC_ERROR, "cannot be read on the active: no_such_cause: what"),  # the unknown cause kept
    }
    assert os.listdir(env.root) == ["ok"]


def test_a_vanished_file_is_no_failure(env: Env) -> None:
    env.serve = lambda body, n: error_frame("gone", "sync_error", "vanished")
    assert env.fetch(["gone"]) == []
    assert env.failures.errors == {} and os.listdir(env.root) == [] and len(env.bodies) == 1


def partial(env: Env, rel: str, prefix: bytes) -> str:
    """A partial transfer of `rel` left by an earlier, cut transfer: its temp file and record."""
    tmp = tmp_name()
    (env.root / tmp).write_bytes(prefix)
    env.resumes.store.record(Partial("data", rel, tmp))
    env.resumes.load({"data"})
    return tmp


BIG = bytes(range(256)) * 40


def test_a_partial_transfer_is_offered_and_resumed_at_its_offset(env: Env) -> None:
    partial(env, "big", BIG[:3000])
    env.serve = lambda body, n: file_frames("big", BIG, offset=3000, chunk=500)
    assert env.fetch(["big"]) == []
    assert env.bodies[0]["resume"] == [[b"big", 3000, blake3.blake3(BIG[:3000]).digest()]]
    assert (env.root / "big").read_bytes() == BIG
    assert env.received == [len(BIG) - 3000] and env.tally["bytes"] == len(BIG) - 3000
    assert env.temps() == [] and env.resumes.index == {} and env.resumes.store.all() == []


def test_a_partial_the_active_does_not_resume_is_discarded_and_the_file_sent_whole(env: Env) -> None:
    tmp = partial(env, "big", b"not the file's first bytes")
    env.serve = lambda body, n: file_frames("big", BIG, offset=0)
    assert env.fetch(["big"]) == []
    assert (env.root / "big").read_bytes() == BIG and not (env.root / tmp).exists()
    assert env.resumes.index == {} and env.resumes.store.all() == []


def test_a_partial_of_a_vanished_file_is_discarded(env: Env) -> None:
    tmp = partial(env, "big", BIG[:100])
    env.serve = lambda body, n: error_frame("big", "sync_error", "vanished")
    assert env.fetch(["big"]) == []
    assert not (env.root / tmp).exists() and env.resumes.index == {}


def test_a_resume_that_was_not_offered_refuses_the_stream(env: Env) -> None:
    env.serve = lambda body, n: file_frames("a", A) + file_frames("big", BIG, offset=5) + file_frames("c", B)
    assert env.fetch(["a", "big", "c"]) == []
    assert env.errors() == {
        "(file stream)": (Cause.SYNC_ERROR, "refused: the active resumes 'big' at byte 5, which was not offered")
    }
    assert sorted(os.listdir(env.root)) == ["a"]  # what was whole is kept, the rest refused
    assert env.temps() == []


@pytest.mark.parametrize("path", [b"../escape", b"/etc/passwd", b"not-asked"])
def test_a_file_that_was_not_asked_for_refuses_the_stream(env: Env, path: bytes) -> None:
    env.serve = lambda body, n: head("x", 3, path=path) + frame(F_DATA, b"bad") + frame(F_END, pack([b"", True, None]))
    assert env.fetch(["a"]) == []
    ((key, (cause, msg)),) = env.errors().items()
    assert key == "(file stream)" and cause is Cause.SYNC_ERROR and msg.startswith("refused: ")
    assert os.listdir(env.root) == [] and not (env.base / "escape").exists()


def test_a_header_with_bad_numbers_refuses_that_file_only(env: Env) -> None:
    env.serve = lambda body, n: (
        head("a", len(A), mode=0o177777)
        + frame(F_DATA, A)
        + frame(F_END, pack([b"", True, None]))
        + file_frames("b", B)
    )
    assert env.fetch(["a", "b"]) == []
    ((key, (cause, msg)),) = env.errors().items()
    assert key == "a" and cause is Cause.SYNC_ERROR and "mode" in msg
    assert os.listdir(env.root) == ["b"] and env.temps() == []


def test_a_frame_past_the_limit_is_a_sync_error_of_the_peer(env: Env) -> None:
    env.serve = lambda body, n: head("a", len(A)) + frame(F_DATA, A[:10]) + header(F_DATA, MAX_FRAME + 1)
    with pytest.raises(PeerError) as info:
        env.fetch(["a"])
    assert type(info.value) is PeerError and info.value.cause is Cause.SYNC_ERROR
    assert "bad frame stream" in info.value.message
    assert os.listdir(env.root) == []  # the file being received: its temp removed


def test_a_cut_stream_is_peer_agent_down_and_leaves_no_temp(env: Env) -> None:
    env.cut = True
    env.serve = lambda body, n: file_frames("a", A) + head("b", len(B)) + frame(F_DATA, B[:5])
    with pytest.raises(PeerAgentDown) as info:
        env.fetch(["a", "b"])
    assert info.value.cause is Cause.PEER_AGENT_DOWN and "connection closed by the agent" in info.value.message
    assert env.temps() == [] and not (env.root / "b").exists()


def test_a_big_file_cut_off_is_kept_and_resumed_by_the_next_fetch(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(partials, "RESUME_MIN", 1000)
    env.cut = True
    env.serve = lambda body, n: head("big", len(BIG)) + frame(F_DATA, BIG[:2500])
    with pytest.raises(PeerAgentDown):
        env.fetch(["big"])
    assert len(env.temps()) == 1 and ("data", "big") in env.resumes.index
    env.cut = False
    env.serve = lambda body, n: file_frames("big", BIG, offset=body["resume"][0][1], chunk=1000)
    assert env.fetch(["big"]) == []
    assert env.bodies[1]["resume"][0][:2] == [b"big", 2500]
    assert (env.root / "big").read_bytes() == BIG and env.temps() == [] and env.resumes.index == {}


# -- the Merkle walk ----------------------------------------------------------------------------------
def fentry(data: bytes) -> Entry:
    return Entry(FILE, 0o644, len(data), MTIME, blake3.blake3(data).digest())


def tree_of(entries: dict[str, Entry]) -> Tree:
    t = Tree()
    for rel in sorted(entries, key=lambda r: r.count("/")):
        t.put(rel, entries[rel])
    return t


DIR_E = Entry(DIR, 0o755, 0, MTIME)


def walk_over(active: Tree, local: Tree, extra: Callable[[list[Any]], None] = lambda out: None) -> tuple[Any, ...]:
    """`walk` against an active holding `active` (its /v1/tree answered as the active does)."""
    asked: list[list[str]] = []

    async def handler(req: MemoryRequest) -> MemoryResponse:
        assert (req.method, req.path) == ("POST", "/v1/tree")
        dirs = [os.fsdecode(p) for p in msgpack.unpackb(req.body)["dirs"]]
        asked.append(dirs)
        out: list[Any] = []
        for reldir in dirs:
            rows = [
                [os.fsencode(n), enc_entry(e, active.dir_hash(f"{reldir}/{n}".lstrip("/")) if e.kind == DIR else None)]
                for n, e in active.children(reldir).items()
            ]
            out.append([os.fsencode(reldir), active.dir_hash(reldir), rows])
        extra(out)
        return MemoryResponse(200, pack(out))

    async def run() -> tuple[Any, ...]:
        client = AgentClient("http://active:1", "t", 5.0, "node-a", transport=MemoryTransport(handler))
        failures = Failures()
        plan, sizes = await walk(client, "data", local, False, failures)
        return plan, sizes, failures, asked

    return asyncio.run(run())


def test_the_walk_lists_only_the_directories_whose_hashes_differ() -> None:
    same = {"a": fentry(A), "same": DIR_E, "same/x": fentry(b"x")}
    active = tree_of({**same, "sub": DIR_E, "sub/b": fentry(B), "sub/deep": DIR_E, "sub/deep/c": fentry(b"c")})
    local = tree_of({**same, "sub": DIR_E, "sub/old": fentry(b"old"), "gone": fentry(b"gone")})
    plan, sizes, failures, asked = walk_over(active, local)
    assert asked == [[""], ["sub"], ["sub/deep"]]  # `same` has the same hash: never listed
    assert sorted(plan.fetch) == ["sub/b", "sub/deep/c"] and sizes == {"sub/b": len(B), "sub/deep/c": 1}
    assert [rel for rel, _ in plan.make] == ["sub/deep"]
    assert sorted(plan.delete) == ["gone", "sub/old"] and failures.errors == {}


def test_a_hostile_listing_is_refused_piece_by_piece() -> None:
    active = tree_of({"new": fentry(A), "keep": fentry(b"theirs")})
    local = tree_of({"keep": fentry(b"ours")})

    def extra(out: list[Any]) -> None:
        rows = out[0][2]
        rows.append([b"x/y", enc_entry(fentry(b"1"))])  # a name with a slash
        rows.append([b"..", enc_entry(fentry(b"1"))])  # not a name
        for row in rows:
            if row[0] == b"keep":
                row[1][1] = 0o177777  # a mode no chmod takes
        out.append([b"not-asked", b"\0" * 16, []])

    plan, _, failures, _ = walk_over(active, local, extra)
    assert plan.fetch == ["new"] and plan.delete == []  # `keep`: its entry refused, our copy left alone
    assert sorted(k[1] for k in failures.errors) == ["..", "keep", "not-asked", "x/y"]
    assert all(e.cause is Cause.SYNC_ERROR and e.message.startswith("refused: ") for e in failures.errors.values())
