"""Security: wrong tokens, hostile paths from a peer (SPEC §4, §12)."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from hasync.peer.frames import frame
from hasync.peer.protocol import F_DATA, F_DONE, F_END, F_HEAD, FRAMES, MSGPACK, pack, unpack
from pairlib import FakePeer, PairEnv, snapshot, wait_for


def http(url: str, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_wrong_token_on_standby_reports_auth_failed(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    (env.src / "conf" / "x.yaml").write_text("x")
    other = env.pair.base / "secrets" / "other.token"
    other.write_text("not-the-pair-token\n")
    cfg = env.pair.config_b
    cfg.write_text(cfg.read_text().replace('token_file = "secrets/pair.token"', 'token_file = "secrets/other.token"'))
    env.a.start()
    r = env.hasync("sync", "--once")
    assert r.returncode == 1
    assert "auth_failed" in r.stdout and "rejected our token" in r.stdout
    assert "not-the-pair-token" not in r.stdout + r.stderr
    env.b.token = "not-the-pair-token"
    env.b.start()
    st = wait_for(lambda: json.loads(env.hasync("status", "--json").stdout), 10)
    wait_for(
        lambda: json.loads(env.hasync("status", "--json").stdout)["cause"] == "auth_failed", 10, what="auth_failed"
    )
    assert st["peer_reachable"] is False or st["cause"] in (None, "auth_failed")
    assert not (env.dst / "conf" / "x.yaml").exists()


class HostileActive(FakePeer):
    """A fake active agent that lists and streams hostile paths."""

    def __init__(self, port: int) -> None:
        super().__init__(port)

    def entry(self, kind: str = "f", size: int = 4) -> list[Any]:
        import blake3

        digest = blake3.blake3(b"evil").digest() if kind == "f" else b""
        row: list[Any] = [kind, 0o644, size, 0, digest, b"", 0, 0, ""]
        if kind == "d":
            row.append(b"\x00" * 16)
        return row

    async def info(self, request: web.Request) -> web.Response:
        return web.Response(
            body=pack(
                {
                    "node": "evil",
                    "role": "active",
                    "instance": "i",
                    "seq": 1,
                    "roots": {"conf": b"\x01" * 16, "udf": b"\x02" * 16},
                    "with_owner": False,
                    "time": 0,
                }
            ),
            content_type=MSGPACK,
        )

    async def tree(self, request: web.Request) -> web.Response:
        req = unpack(await request.read())
        out = []
        for d in req["dirs"]:
            rows = [
                [b"../evil-parent", self.entry()],
                [b"/tmp/evil-abs", self.entry()],
                [b"sub/../../evil-slash", self.entry()],
                [b"nul\x00name", self.entry()],
                [b"..", self.entry("d")],
                [b".", self.entry("d")],
                [b"ok.txt", self.entry()],
                [b"bad-kind", ["x", 0o644, 0, 0, b"", b"", 0, 0, ""]],
            ]
            out.append([d, b"\x03" * 16, rows if d == b"" else []])
        return web.Response(body=pack(out), content_type=MSGPACK)

    async def files(self, request: web.Request) -> web.StreamResponse:
        import blake3

        resp = web.StreamResponse(headers={"Content-Type": FRAMES})
        await resp.prepare(request)
        body = b"evil"
        digest = blake3.blake3(body).digest()
        # First the file that was asked for, then one that was not (an escape attempt).
        for path in (b"ok.txt", b"../../escaped.txt"):
            await resp.write(frame(F_HEAD, pack([path, "f", 0o644, len(body), 0, 0, 0])))
            await resp.write(frame(F_DATA, body))
            await resp.write(frame(F_END, pack([digest, True, None])))
        await resp.write(frame(F_DONE))
        return resp

    async def changes(self, request: web.Request) -> web.Response:
        await asyncio.sleep(1)
        return web.Response(
            body=pack(
                {
                    "instance": "i",
                    "seq": 1,
                    "reset": False,
                    "changes": [["conf", b"../../via-changes", self.entry()], ["conf", b"/abs-change", self.entry()]],
                    "roots": {},
                    "with_owner": False,
                }
            ),
            content_type=MSGPACK,
        )

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/info", self.info)
        app.router.add_post("/v1/tree", self.tree)
        app.router.add_post("/v1/files", self.files)
        app.router.add_get("/v1/changes", self.changes)


@pytest.fixture
def hostile(make_pair) -> Iterator[tuple[PairEnv, HostileActive]]:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    with HostileActive(env.pair.port_a) as h:
        yield env, h


def test_hostile_paths_from_the_active_are_refused(hostile: tuple[PairEnv, HostileActive]) -> None:
    env, _ = hostile
    before = snapshot(env.pair.base)
    r = env.hasync("sync", "--once", "--json")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    doc = json.loads(r.stdout)
    reasons = " ".join(e["reason"] for e in doc["errors"])
    assert "refused" in reasons
    # Only the two ok.txt may be written; nothing outside the standby's sync dirs at all.
    after = snapshot(env.pair.base)
    new = {p for p in after.keys() - before.keys() if p.split("/")[0] not in ("state", "logs")}
    assert new == {"data/node-b/conf/ok.txt", "data/node-b/udf/ok.txt"}, new
    assert not Path("/tmp/evil-abs").exists()
    log = (env.pair.base / "logs" / "node-b" / "ha.log").read_text()
    assert "refused data from the active" in log


def test_hostile_change_feed_is_refused_by_a_running_standby(hostile: tuple[PairEnv, HostileActive]) -> None:
    env, _ = hostile
    env.b.start()
    log = env.pair.base / "logs" / "node-b" / "ha.log"
    wait_for(lambda: "via-changes" in log.read_text(), 15, what="the hostile change to be refused")
    assert not (env.pair.base / "data" / "via-changes").exists()
    assert not (env.pair.base / "via-changes").exists()
    assert not Path("/abs-change").exists()


def test_a_malformed_resume_offer_is_refused(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    (env.src / "conf" / "a.yaml").write_text("a")
    env.a.start()
    wait_for(lambda: http(f"http://127.0.0.1:{env.pair.port_a}/v1/info", env.a.token)[0] == 200, 30)

    def post(resume: list[Any]) -> tuple[int, bytes]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{env.pair.port_a}/v1/files",
            data=pack({"dir": "conf", "paths": [b"a.yaml"], "resume": resume}),
            headers={"Authorization": f"Bearer {env.a.token}", "Content-Type": MSGPACK},
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    for bad in (
        [[b"a.yaml", 0, b"\0" * 32]],  # offset 0
        [[b"a.yaml", -1, b"\0" * 32]],
        [[b"a.yaml", 1, b"short"]],  # not a BLAKE3 digest
        [[b"../../etc/passwd", 1, b"\0" * 32]],  # a path outside the sync dir
        [[b"a.yaml", 1]],  # not a triple
        ["junk"],
    ):
        status, body = post(bad)
        assert status == 400 and json.loads(body)["error"]["code"] == "path_refused", (bad, status, body)
    # A well-formed offer that does not match the file's first bytes: the whole file, offset 0.
    status, body = post([[b"a.yaml", 1, b"\0" * 32]])
    assert status == 200
    kind, n = body[0:1], int.from_bytes(body[1:5], "big")
    assert kind == F_HEAD and unpack(body[5 : 5 + n])[-1] == 0
