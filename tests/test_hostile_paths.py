"""Hostile paths and numbers from a request, the peer, a backup set or the local disk (issue 9, SPEC §4, §12).

Every path goes through fsutil.validate_relpath and no-follow directory fds; every number from the
peer is range-checked at decoding. Each test counts the hostile inputs it tries (HOSTILE_TRIED).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hasync import config as hconfig
from hasync.backup import BackupSets
from hasync.fsutil import tmp_name
from hasync.manifest import FILE, Entry, Tree
from hasync.peer.frames import frame
from hasync.peer.protocol import F_DATA, F_DONE, F_END, F_HEAD, MSGPACK, dec_entry, dec_head, pack, unpack
from hasync.replication.active import ActiveSide
from hasync.replication.apply import Applier
from hasync.replication.partials import Partial, Partials
from pairlib import FakePeer, PairEnv, snapshot, wait_for

HOSTILE_TRIED: dict[str, int] = {}  # test name -> hostile inputs tried (reported in the closing note)


@pytest.fixture(scope="module", autouse=True)
def _report_hostile_inputs() -> Iterator[None]:
    """Print how many hostile inputs this file tried (run with -s to see it)."""
    yield
    print(f"\nhostile inputs tried: {sum(HOSTILE_TRIED.values())} {HOSTILE_TRIED}")


# Paths no request may name: each is refused with 400 before anything is done.
BAD_PATHS: list[Any] = [
    "..",
    "../..",
    "../node-a",
    "sub/../..",
    "sub/..",
    "a/../../b",
    ".",
    "./x",
    "x/.",
    "",
    "/",
    "/etc/passwd",
    "/tmp",
    "a//b",
    "a/",
    "nul\0name",
    "\0",
    ".hasync-tmp-0123456789abcdef",
    123,
    None,
    ["x"],
]


def _post(port: int, token: str, path: str, body: bytes, ctype: str = "application/json") -> tuple[int, bytes]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": ctype},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _diag(env: PairEnv, port: int, op: str, paths: Any) -> tuple[int, Any]:
    status, body = _post(port, env.a.token, "/v1/diag", json.dumps({"op": op, "paths": paths}).encode())
    return status, json.loads(body)


def _outside_state(base: Path) -> dict[str, Any]:
    """Everything under the pair's base but the agents' own state, logs and output."""
    return {
        k: v for k, v in snapshot(base).items() if k.split("/")[0] not in ("state", "logs") and not k.endswith(".out")
    }


def _diag_pair(make_pair, base: Path) -> tuple[PairEnv, Path]:  # type: ignore[no-untyped-def]
    """A pair in sync; junk files beside the sync dirs (what `..` reaches) and outside, behind a link `lnk`."""
    env: PairEnv = make_pair()
    outside = base / "outside"
    outside.mkdir()
    (outside / "sedOUT").touch()
    (outside / "sedOUT").chmod(0)
    (outside / "secret").write_text("s" * 1234)
    (outside / "secret").chmod(0o640)
    for root in (env.src, env.dst):
        (root / "conf" / "keep.yaml").write_text("keep")
        (root / "conf" / "lnk").symlink_to(outside)
        (root / "sedUP").touch()
        (root / "sedUP").chmod(0)
    env.a.start()
    env.b.start()
    env.wait_in_sync()
    return env, outside


def test_diag_refuses_hostile_paths_and_deletes_nothing(make_pair, base: Path) -> None:  # type: ignore[no-untyped-def]
    env, outside = _diag_pair(make_pair, base)
    before = _outside_state(base)
    answers: list[tuple[Any, ...]] = []
    for port in (env.pair.port_a, env.pair.port_b):
        for op in ("delete_junk", "stat"):
            answers.extend((port, op, bad, *_diag(env, port, op, [["conf", bad]])) for bad in BAD_PATHS)
            # One bad path among good ones refuses the whole request: nothing is done.
            answers.append((port, op, "..", *_diag(env, port, op, [["conf", "keep.yaml"], ["conf", ".."]])))
            # Not a list of [dir, path] pairs of strings.
            shapes = ("..", [[".."]], [["conf", "x", "y"]], {"conf": ".."}, [[1, "x"]])
            answers.extend((port, op, shape, *_diag(env, port, op, shape)) for shape in shapes)
    # Nothing was deleted anywhere, now or by the next reconcile, and no `..` got into the active's tree.
    assert env.hasync("sync", "--once").returncode == 0
    env.wait_in_sync()
    assert _outside_state(base) == before
    assert (outside / "sedOUT").exists() and (env.src / "sedUP").exists() and (env.dst / "sedUP").exists()
    status, body = _post(env.pair.port_a, env.a.token, "/v1/tree", pack({"dir": "conf", "dirs": [b""]}), MSGPACK)
    assert status == 200
    names = {os.fsdecode(n) for _, _, rows in unpack(body) for n, _ in rows}
    assert names == {"keep.yaml", "lnk"}, names
    # Each request was refused with 400 path_refused and a one-line message.
    for port, op, bad, status, doc in answers:
        assert status == 400, (port, op, bad, doc)
        msg = doc["error"]["message"]
        assert doc["error"]["code"] == "path_refused" and msg and "\n" not in msg, doc
    for agent in (env.a, env.b):
        assert "Traceback" not in agent.output()
    HOSTILE_TRIED["diag"] = len(answers)


def test_diag_never_looks_through_a_symlinked_parent(make_pair, base: Path) -> None:  # type: ignore[no-untyped-def]
    env, outside = _diag_pair(make_pair, base)
    for port in (env.pair.port_a, env.pair.port_b):
        # stat answers nothing about what lies behind the link (mode, owner, size of a file outside).
        status, doc = _diag(env, port, "stat", [["conf", "lnk/secret"], ["conf", "lnk/sedOUT"], ["conf", "keep.yaml"]])
        assert status == 200 and doc[:2] == [None, None], doc
        assert doc[2] is not None and doc[2]["size"] == 4
        # delete_junk refuses, and the junk file outside stays.
        status, doc = _diag(env, port, "delete_junk", [["conf", "lnk/sedOUT"]])
        assert status == 400 and doc["error"]["code"] == "path_refused", doc
        assert (outside / "sedOUT").exists()
    HOSTILE_TRIED["diag_symlinked_parent"] = 6


def _active_side(env: PairEnv) -> ActiveSide:
    cfg = hconfig.load(env.pair.config_a)
    return ActiveSide(cfg)


def test_refresh_refuses_paths_outside_the_sync_dir(make_pair, base: Path) -> None:  # type: ignore[no-untyped-def]
    """Defence in depth: whoever hands Side.refresh a path, `..` and friends never enter the tree."""
    env: PairEnv = make_pair()
    (env.src / "conf" / "sub").mkdir()
    (env.src / "conf" / "sub" / "a.txt").write_text("a")
    outside = base / "outside"
    outside.mkdir()
    (outside / "o.txt").write_text("outside")
    (env.src / "conf" / "lnk").symlink_to(outside)

    async def run() -> tuple[Tree, int]:
        side = _active_side(env)
        await side.prepare()
        tree = side.trees["conf"]
        assert tree is not None
        before = dict(tree.items())
        root = env.src / "conf"
        hostile = [
            f"{root}/..",
            f"{root}/../..",
            f"{root}/sub/..",
            f"{root}/sub/../..",
            f"{root}/./sub",
            f"{root}//sub",
            f"{root}/sub/",
            f"{root}/lnk/o.txt",  # through a symlinked parent
            f"{root}/sub/\0x",
        ]
        await side.refresh(hostile)
        assert dict(tree.items()) == before, set(dict(tree.items())) ^ set(before)
        return tree, len(hostile)

    tree, n = asyncio.run(run())
    assert not any(".." in p.split("/") or p.startswith("lnk/") for p, _ in tree.items())
    HOSTILE_TRIED["refresh"] = n


def test_symlink_in_backup_set_never_redirects_a_backup(make_pair, base: Path) -> None:  # type: ignore[no-untyped-def]
    """The issue's scenario: link evil -> X on the active, replaced by a real dir holding x, x edited."""
    env: PairEnv = make_pair()
    x_dir = base / "X"
    x_dir.mkdir()
    conf = env.src / "conf"
    (conf / "evil").symlink_to(x_dir)
    env.a.start()
    env.b.start()
    env.wait_in_sync()
    assert os.readlink(env.dst / "conf" / "evil") == str(x_dir)
    (conf / "evil").unlink()
    (conf / "evil").mkdir()
    (conf / "evil" / "x").write_text("first x")
    env.wait_in_sync()
    (conf / "evil" / "x").write_text("second x")
    env.wait_in_sync()
    assert list(x_dir.iterdir()) == []
    # The backups hold both old versions: the link, and the first x (in a later set when the link holds its name).
    backup = env.pair.base / "backup" / "node-b"
    kept: dict[str, Any] = {}
    for s in sorted(backup.iterdir()):
        for p, v in snapshot(s).items():
            kept.setdefault(p, []).append(v)
    assert kept["conf/evil"][0] == ("l", str(x_dir)), kept
    assert any(v[0] == "f" and v[2] == len("first x") for v in kept["conf/evil/x"]), kept
    HOSTILE_TRIED["backup_set_link"] = 1


@pytest.mark.parametrize("kind", ["link", "file", "dangling"])
def test_backup_keep_through_non_dir_in_set(tmp_path: Path, kind: str) -> None:
    """A parent already kept in the set as a link (to a dir outside), a file or a dangling link: the next
    backup under that name goes to a new set, never through it. Also across file systems (the copy path)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    for root in (tmp_path / "backup", Path("/dev/shm") / f"hasync-test-{os.getpid()}-{kind}"):
        data = tmp_path / "data"
        data.mkdir(exist_ok=True)
        b = BackupSets(root, "FlinkServer", max_copies=5, period_s=3600)
        cur = b.current()
        (cur / "conf").mkdir()
        if kind == "link":
            (cur / "conf" / "evil").symlink_to(outside)
        elif kind == "file":
            (cur / "conf" / "evil").write_text("old evil file")
        else:
            (cur / "conf" / "evil").symlink_to(tmp_path / "nowhere")
        (data / "x").write_text("old x")
        fd = os.open(data, os.O_RDONLY | os.O_DIRECTORY)
        try:
            b.keep("conf", "evil/x", fd, "x", move=False)
            b.keep("conf", "evil/x", fd, "x", move=True)  # the next one: already kept, the source just goes
        finally:
            os.close(fd)
        assert list(outside.iterdir()) == [] and not (tmp_path / "nowhere").exists()
        sets = b.sets()
        assert len(sets) == 2, sets
        assert (sets[1] / "conf" / "evil" / "x").read_text() == "old x"
        assert not (data / "x").exists()
        if root.is_relative_to("/dev/shm"):
            import shutil

            shutil.rmtree(root)
    HOSTILE_TRIED[f"backup_keep_{kind}"] = 2


def test_chmod_never_follows_a_symlink_swapped_in(tmp_path: Path) -> None:
    """Applier.chmod while a local process swaps the file for a symlink to a file outside, over and over."""
    root = tmp_path / "conf"
    root.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("outside")
    victim.chmod(0o644)
    (root / "f").write_text("f")
    digest = blake3.blake3(b"f").digest()
    (root / "as-file").write_text("f")
    (root / "as-link").symlink_to(victim)
    cfg_dir = hconfig.SyncDir(name="conf", path=root)
    tree = Tree()
    tree.put("f", Entry(FILE, 0o644, 1, 0, digest))
    b = BackupSets(tmp_path / "backup", "FlinkServer")
    stop = threading.Event()

    def flip() -> None:
        # Atomic swaps between a regular file and a symlink to the victim.
        while not stop.is_set():
            try:
                os.link(root / "as-file", root / "f.new")
                os.replace(root / "f.new", root / "f")
                os.symlink(victim, root / "l.new")
                os.replace(root / "l.new", root / "f")
            except FileExistsError:
                pass

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    tries = 0
    try:
        deadline = time.monotonic() + 3.0
        mode = 0o600
        while time.monotonic() < deadline:
            applier = Applier(cfg_dir, tree, b, as_root=os.geteuid() == 0, fsync_each=False)
            try:
                applier.chmod("f", Entry(FILE, mode, 1, 0, digest))
            except FileNotFoundError:
                pass  # the link was there: "changed on the standby during the sync"
            finally:
                applier.close()
            tries += 1
            tree.put("f", Entry(FILE, 0o644, 1, 0, digest))
            assert stat.S_IMODE(victim.lstat().st_mode) == 0o644, f"victim chmod-ed through a link after {tries}"
            mode = 0o600 if mode == 0o640 else 0o640
    finally:
        stop.set()
        flipper.join(5)
    assert tries > 100
    HOSTILE_TRIED["chmod_race"] = tries


def test_partial_transfer_records_with_unsafe_paths_are_dropped(tmp_path: Path) -> None:
    """A record of a partial transfer is read from the state dir (the local disk): its path obeys the
    path rules too, so a damaged or planted record never names a directory outside the sync dir."""
    store = Partials(tmp_path)
    bad = ["..", "../x", "a/../../x", "/etc/x", "", "a//b", "nul\0", ".hasync-tmp-0123456789abcdef/x"]
    for rel in [*bad, "ok/file.bin"]:
        store.record(Partial("conf", rel, tmp_name()))
    assert [p.rel for p in store.all()] == ["ok/file.bin"]
    HOSTILE_TRIED["partial_records"] = len(bad)


# -- numbers from the peer ---------------------------------------------------------------------------------
GOOD_ROW: list[Any] = ["f", 0o644, 4, 0, blake3.blake3(b"good").digest(), b"", 0, 0, ""]


def _row(**kw: Any) -> list[Any]:
    fields = ["kind", "mode", "size", "mtime_ns", "digest", "link", "uid", "gid", "error"]
    row = list(GOOD_ROW)
    for k, v in kw.items():
        row[fields.index(k)] = v
    return row


BAD_ROWS: list[Any] = [
    _row(uid=2**32),
    _row(uid=2**32 - 1),
    _row(uid=-1),
    _row(gid=2**32),
    _row(gid=2**64),
    _row(mode=2**31),
    _row(mode=-1),
    _row(mode=0o10000),
    _row(mode="644"),
    _row(size=-1),
    _row(size=2**63),
    _row(size=1.5),
    _row(mtime_ns=2**63),
    _row(mtime_ns=-(2**63) - 1),
    _row(mtime_ns=2**70),
    _row(uid=True),
    _row(digest=b"short"),
    _row(digest="not bytes"),
    _row(digest=5),
    _row(kind="l", link=b"", uid=0),
    _row(kind="l", link=b"t", uid=2**40),
    _row(kind="l", link=b"a\0b"),
    _row(kind="l", link=b"x" * 5000),
    _row(kind="e", error="no_such_cause: boom"),
    _row(kind="e", error="x" * 5000),
    _row(error=7),
    _row(kind="x"),
    ["d", 0o755, 0, 0, b"", b"", 0, 0, "", b"short hash"],
    GOOD_ROW[:8],
    "not a row",
    None,
]


def test_entries_with_out_of_range_numbers_are_refused() -> None:
    assert dec_entry(list(GOOD_ROW))[0].mode == 0o644
    assert dec_entry(_row(kind="l", link=b"/etc/hostname", uid=2**32 - 2))[0].uid == 2**32 - 2
    for row in BAD_ROWS:
        with pytest.raises((ValueError, TypeError)):
            dec_entry(row)
    heads = [
        [b"f", "f", 2**31, 4, 0, 0, 0],
        [b"f", "f", 0o644, -4, 0, 0, 0],
        [b"f", "f", 0o644, 4, 2**64 - 1, 0, 0],
        [b"f", "f", 0o644, 4, 0, 2**32, 0],
        [b"f", "f", 0o644, 4, 0, 0, -2],
        [b"f", "f", 0o644, 4, 0, 0, 0, 5],  # resume offset beyond the size
        [b"f", "l", 0o644, 4, 0, 0, 0],
    ]
    for head in heads:
        raw, bad, _ = dec_head(pack(head))
        assert raw == b"f" and isinstance(bad, ValueError), head
    assert isinstance(dec_head(pack([b"f", "f", 0o644, 4, 0, 0, 0, 4]))[1], Entry)
    for shape in ([b"f"], "x", [b"f", "f", 0, 0, 0, 0, 0, 0, 0]):
        with pytest.raises(ValueError):
            dec_head(pack(shape))
    HOSTILE_TRIED["decoders"] = len(BAD_ROWS) + len(heads) + 3


_WIRE_INT = st.one_of(
    st.integers(-(2**63), 2**64 - 1),  # everything msgpack can carry
    st.sampled_from(
        [0, 1, -1, 2**31, 2**32 - 2, 2**32 - 1, 2**32, 2**40, 2**63 - 1, 2**63, 2**64 - 1, 0o7777, 0o10000]
    ),
)
_WIRE_ANY = st.one_of(_WIRE_INT, st.binary(max_size=40), st.text(max_size=20), st.none(), st.booleans(), st.floats())


_GOOD_ROWS: dict[str, list[Any]] = {
    "f": ["f", 0o644, 4, 0, bytes(32), b"", 0, 0, ""],
    "d": ["d", 0o755, 0, 0, b"", b"", 0, 0, "", bytes(16)],
    "l": ["l", 0o777, 6, 0, b"", b"target", 0, 0, ""],
    "e": ["e", 0o000, 0, 0, b"", b"", 0, 0, "permission_denied: no"],
}


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(_GOOD_ROWS)),
    st.lists(st.tuples(st.integers(0, 9), st.one_of(_WIRE_INT, _WIRE_ANY)), min_size=1, max_size=3),
)
def test_fuzzed_entries_decode_in_range_or_are_refused(kind: str, changes: list[tuple[int, Any]]) -> None:
    """A good entry with 1 to 3 fields replaced by anything msgpack can carry: decoded within the ranges
    the system calls take, or refused with ValueError/TypeError (never OverflowError, never a crash)."""
    row = list(_GOOD_ROWS[kind])
    for i, value in changes:
        if i < len(row):
            row[i] = value
    try:
        e, dir_hash = dec_entry(row)
    except (ValueError, TypeError):
        HOSTILE_TRIED["fuzzed_entries_refused"] = HOSTILE_TRIED.get("fuzzed_entries_refused", 0) + 1
        return
    assert 0 <= e.mode <= 0o7777 and 0 <= e.size < 2**63 and -(2**63) <= e.mtime_ns < 2**63
    assert 0 <= e.uid <= 2**32 - 2 and 0 <= e.gid <= 2**32 - 2 and "\0" not in e.link
    assert len(e.digest) in (0, 32) and (dir_hash is None or len(dir_hash) == 16)
    assert e.kind != "e" or e.cause is not None


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_WIRE_INT, _WIRE_ANY), min_size=0, max_size=9))
def test_fuzzed_file_headers_decode_in_range_or_are_refused(fields: list[Any]) -> None:
    try:
        _, meta, offset = dec_head(pack([b"f", "f", *fields]))
    except (ValueError, TypeError):
        return
    if isinstance(meta, Entry):
        assert 0 <= meta.mode <= 0o7777 and 0 <= offset <= meta.size and 0 <= meta.uid <= 2**32 - 2
    else:
        HOSTILE_TRIED["fuzzed_heads"] = HOSTILE_TRIED.get("fuzzed_heads", 0) + 1


class NumbersActive(FakePeer):
    """A fake active listing good files beside entries and file headers with out-of-range numbers."""

    BODY = b"good"

    def __init__(self, port: int) -> None:
        super().__init__(port)
        digest = blake3.blake3(self.BODY).digest()
        self.rows: dict[bytes, list[Any]] = {
            b"good-1.txt": list(GOOD_ROW),
            b"good-2.txt": list(GOOD_ROW),
            b"bad-uid.txt": _row(uid=2**32),
            b"bad-gid.txt": _row(gid=2**40),
            b"bad-mode.txt": _row(mode=2**31),
            b"bad-mtime.txt": _row(mtime_ns=2**64 - 1),
            b"bad-size.txt": _row(size=-5),
            b"bad-link": _row(kind="l", link=b"target", uid=2**40, digest=b"", size=6),
            b"bad-cause": _row(kind="e", error="not_a_cause: x"),
            # Good listings whose file headers carry the bad numbers.
            b"head-mode.txt": list(GOOD_ROW),
            b"head-uid.txt": list(GOOD_ROW),
            b"head-mtime.txt": list(GOOD_ROW),
        }
        self.heads: dict[bytes, list[Any]] = {
            b"head-mode.txt": [2**31, 4, 0, 0, 0],
            b"head-uid.txt": [0o644, 4, 0, 2**32, 0],
            b"head-mtime.txt": [0o644, 4, 2**64 - 1, 0, 0],
        }
        self.digest = digest

    async def info(self, request: web.Request) -> web.Response:
        doc = {
            "node": "fake",
            "role": "active",
            "instance": "i",
            "seq": 1,
            "roots": {"conf": b"\x01" * 16, "udf": b"\x02" * 16},
            "with_owner": True,
            "time": time.time(),
        }
        return web.Response(body=pack(doc), content_type=MSGPACK)

    async def tree(self, request: web.Request) -> web.Response:
        req = unpack(await request.read())
        rows: list[Any] = [[name, row] for name, row in self.rows.items()]
        rows += [[b"not-a-pair"], "junk", [b"bad-name\0", list(GOOD_ROW)]]
        out = [[d, b"\x03" * 16, rows if d == b"" and req["dir"] == "conf" else []] for d in req["dirs"]]
        # Listings of the wrong shape, or of a directory that was not asked for.
        out += [[b"../evil", b"\x03" * 16, [[b"x", list(GOOD_ROW)]]], [b"", b"\x04" * 16, "rows"], "junk"]
        return web.Response(body=pack(out), content_type=MSGPACK)

    async def files(self, request: web.Request) -> web.StreamResponse:
        req = unpack(await request.read())
        resp = web.StreamResponse(headers={"Content-Type": "application/x-hasync-frames"})
        await resp.prepare(request)
        for path in req["paths"]:
            head = self.heads.get(path, [0o644, 4, 0, 0, 0])
            row = self.rows.get(path, GOOD_ROW)
            if path not in self.heads:  # the listing's numbers, as a real active would send them
                head = [row[1], row[2], row[3], row[6], row[7]]
            await resp.write(frame(F_HEAD, pack([path, "f", *head])))
            await resp.write(frame(F_DATA, self.BODY))
            await resp.write(frame(F_END, pack([self.digest, True, None])))
        await resp.write(frame(F_DONE))
        return resp

    async def changes(self, request: web.Request) -> web.Response:
        await asyncio.sleep(1)
        doc = {"instance": "i", "seq": 1, "reset": False, "changes": [], "roots": {}, "with_owner": True}
        return web.Response(body=pack(doc), content_type=MSGPACK)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/info", self.info)
        app.router.add_post("/v1/tree", self.tree)
        app.router.add_post("/v1/files", self.files)
        app.router.add_get("/v1/changes", self.changes)


@pytest.fixture
def numbers(make_pair) -> Iterator[tuple[PairEnv, NumbersActive]]:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    with NumbersActive(env.pair.port_a) as fake:
        yield env, fake


def test_out_of_range_numbers_from_the_peer_refuse_that_path_only(numbers: tuple[PairEnv, NumbersActive]) -> None:
    env, fake = numbers
    # The standby already holds a copy of one path the active now lists with a bad uid: it is kept.
    (env.dst / "conf" / "bad-uid.txt").write_text("mine")
    env.b.start()
    bad = {os.fsdecode(p) for p in fake.rows if p.startswith(b"bad")} | {os.fsdecode(p) for p in fake.heads}

    def errors() -> dict[str, str]:
        st = json.loads(env.hasync("status", "--json").stdout)
        return {e["path"]: e["cause"] for e in st["errors"] if e["dir"] == "conf"}

    try:
        found = wait_for(lambda: (e := errors()).keys() >= bad | {"../evil"} and e, 30, what=f"{sorted(bad)} reported")
    except AssertionError:
        raise AssertionError(f"{errors()}\n{env.b.output()}") from None
    assert {found[p] for p in bad | {"../evil"}} == {"sync_error"}, found
    for good in ("good-1.txt", "good-2.txt"):
        assert (env.dst / "conf" / good).read_bytes() == fake.BODY
    assert (env.dst / "conf" / "bad-uid.txt").read_text() == "mine"
    for name in bad - {"bad-uid.txt"}:
        assert not os.path.lexists(env.dst / "conf" / name), name
    assert env.b.healthy()
    r = env.hasync("sync", "--once", "--json")
    doc = json.loads(r.stdout)
    reasons = {e["path"]: e["reason"] for e in doc["errors"]}
    assert bad <= reasons.keys() and "out of range" in reasons["bad-uid.txt"], reasons
    out = env.b.output()
    assert "Traceback" not in out and "OverflowError" not in out, out[-2000:]
    assert not (env.dst / "evil").exists() and not (env.dst / "conf" / "x").exists()
    HOSTILE_TRIED["peer_numbers"] = len(bad) + 6


class BadFeedActive(NumbersActive):
    """A fake active whose change feed is of the wrong shape: `feed` replaces keys of a good answer
    (a key given as None is left out)."""

    def __init__(self, port: int, feed: dict[str, Any]) -> None:
        super().__init__(port)
        self.feed = feed
        self.polls = 0

    async def changes(self, request: web.Request) -> web.Response:
        self.polls += 1
        await asyncio.sleep(0.2)
        doc: dict[str, Any] = {
            "instance": "i",
            "seq": 1 + self.polls,
            "reset": False,
            "changes": [],
            "roots": {"conf": b"\x01" * 16, "udf": b"\x02" * 16},
            "with_owner": True,
        }
        doc.update(self.feed)
        return web.Response(body=pack({k: v for k, v in doc.items() if v is not None}), content_type=MSGPACK)


BAD_FEEDS: dict[str, dict[str, Any]] = {
    "change-without-path": {"changes": [["conf"], ["conf", b"feed-good.txt", list(GOOD_ROW)]]},
    "change-a-number": {"changes": [5]},
    "changes-a-map": {"changes": {"a": 1}},
    "no-changes-key": {"changes": None},
}


@pytest.mark.parametrize("feed", BAD_FEEDS.values(), ids=BAD_FEEDS.keys())
def test_malformed_change_feed_entries_are_refused_not_a_loop_traceback(make_pair, feed: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    """Issue 9 #8, variant: a change feed of the wrong shape (`["conf"]`, `5`, a map, no `changes`) raised
    ValueError/TypeError/KeyError outside the per-entry check in Standby._apply_changes: "standby loop error"
    with a traceback every second or so, forever. It is refused whole (protocol.dec_changes) as a peer
    fault, logged once, reported as sync_error, and the standby falls back to full reconciles."""
    HOSTILE_TRIED["malformed_change_feed"] = HOSTILE_TRIED.get("malformed_change_feed", 0) + 1
    env: PairEnv = make_pair()
    fake = BadFeedActive(env.pair.port_a, feed)
    with fake:
        env.b.start()
        wait_for(lambda: fake.polls >= 4, 30, what="the standby to poll the change feed four times")
        out = env.b.output()
        assert "standby loop error" not in out and "Traceback" not in out, out[-2000:]
        assert out.count("refused the change feed") == 1, out[-2000:]  # a state change, not each poll
        st = json.loads(env.hasync("status", "--json").stdout)
        assert st["cause"] == "sync_error" and st["in_sync"] is False, st
        assert st["peer_error"]["cause"] == "sync_error" and "change feed" in st["peer_error"]["message"], st
