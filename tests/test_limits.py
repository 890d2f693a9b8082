"""Resource limits of the agent (docs/security.md): slow clients, log floods, huge answers, bad bodies."""

from __future__ import annotations

import json
import os
import resource
import select
import selectors
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from hasync import config
from hasync.peer.protocol import MSGPACK, pack
from pairlib import FakePeer, PairEnv, raw_request, wait_for

LIMITS = "\n[limits]\n"


def http(url: str, token: str | None = None, data: bytes | None = None, ctype: str = "application/json") -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    if data is not None:
        headers["Content-Type"] = ctype
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def rss_kib(pid: int, key: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class SlowClients:
    """`n` connections that send an incomplete request head, then one byte a second; closed ones are
    reopened (at most `reopen_per_s` a second) while `reopen` is set."""

    def __init__(self, port: int, n: int, reopen_per_s: int = 200) -> None:
        self.port, self.n, self.reopen_per_s = port, n, reopen_per_s
        self.sel = selectors.DefaultSelector()
        self.opened_at: dict[socket.socket, float] = {}
        self.lifetimes: list[float] = []  # seconds from connect to the agent closing it
        self.opened = 0
        self.connect_failures = 0
        self.reopen = threading.Event()
        self.reopen.set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> None:
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", self.port))
            s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        except OSError:
            self.connect_failures += 1
            s.close()
            return
        s.setblocking(False)
        self.opened += 1
        self.opened_at[s] = time.monotonic()
        self.sel.register(s, selectors.EVENT_READ)

    def _closed(self, s: socket.socket) -> None:
        self.lifetimes.append(time.monotonic() - self.opened_at.pop(s))
        self.sel.unregister(s)
        s.close()

    def _run(self) -> None:
        for _ in range(self.n):
            self._open()
        last_trickle = time.monotonic()
        budget, last_budget = 0.0, time.monotonic()
        while not self.stop.is_set():
            for key, _ in self.sel.select(0.1):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data or b"503" in data:
                    self._closed(s)
            if time.monotonic() - last_trickle >= 1.0:
                last_trickle = time.monotonic()
                for s in list(self.opened_at):
                    try:
                        s.send(b"x")
                    except OSError:
                        self._closed(s)
            if self.reopen.is_set():
                now = time.monotonic()
                budget = min(budget + (now - last_budget) * self.reopen_per_s, self.reopen_per_s)
                last_budget = now
                while budget >= 1 and len(self.opened_at) < self.n:
                    self._open()
                    budget -= 1
        for s in list(self.opened_at):
            self._closed(s)

    def __enter__(self) -> SlowClients:
        self.thread.start()
        wait_for(lambda: self.opened >= self.n, 60, what=f"{self.n} slow connections")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def healthz_latency(port: int) -> float:
    t = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        assert r.status == 200
    return time.monotonic() - t


def test_slow_clients_neither_stop_healthz_nor_replication(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair(extra=LIMITS + "head_timeout_s = 4\n")
    env.a.start()
    env.b.start()
    env.wait_in_sync()
    assert env.a.proc is not None
    pid = env.a.proc.pid
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (1024, 1024))  # the usual limit
    out_before = env.a.log.stat().st_size
    rss, lat, fds = [], [], []
    with SlowClients(env.pair.port_a, 1100) as attack:
        for i in range(8):
            lat.append(healthz_latency(env.pair.port_a))
            rss.append(rss_kib(pid))
            fds.append(open_fds(pid))
            (env.src / "conf" / f"during-{i}.txt").write_text(f"written during the attack {i}")
            wait_for((env.dst / "conf" / f"during-{i}.txt").exists, 30, what="replication during the attack")
        assert max(fds) < 1024
        # No more new connections: the agent closes the ones left once their head is overdue.
        attack.reopen.clear()
        wait_for(lambda: not attack.opened_at, 4 + 30, what="every slow connection closed by the agent")
        opened, closed = attack.opened, len(attack.lifetimes)
    assert closed == opened and opened > 1100
    env.wait_in_sync()
    assert env.a.healthy()
    grown = env.a.log.stat().st_size - out_before
    assert grown < 16 << 10, f"agent output grew by {grown} bytes during the attack"
    ha = (env.pair.base / "logs" / "node-a" / "ha.log").read_text()
    assert 1 <= ha.count("connection limit reached") <= 3
    assert "Too many open files" not in ha
    print(
        f"\nslow clients: {opened} connections opened, agent RSS max {max(rss) / 1024:.0f} MiB, "
        f"open fds max {max(fds)}, /healthz latency median {statistics.median(lat) * 1000:.1f} ms "
        f"max {max(lat) * 1000:.1f} ms, longest slow connection {max(attack.lifetimes):.1f} s"
    )


def test_at_the_cap_with_every_connection_busy_a_new_one_gets_503(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair(extra=LIMITS + "max_connections = 8\n")
    env.a.start()  # alone: the standby's connections would count too
    from hasync.peer.protocol import unpack

    url = f"http://127.0.0.1:{env.pair.port_a}/v1/info"
    info = unpack(wait_for(lambda: (r := http(url, env.a.token))[0] == 200 and r[1], 30, what="the first scan"))
    poll = (
        f"GET /v1/changes?instance={info['instance']}&since={info['seq']}&wait=20 HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {env.a.token}\r\n\r\n"
    ).encode()
    held: list[socket.socket] = []

    def busy_at_cap() -> bytes | None:
        # Long polls are being answered, so never closed to make room; one whose head the agent had
        # not read yet when a probe came may have been (that is the rule): open it again.
        for s in [s for s in held if select.select([s], [], [], 0)[0]]:
            held.remove(s)
            s.close()
        while len(held) < 8:
            s = socket.create_connection(("127.0.0.1", env.pair.port_a), timeout=30)
            s.sendall(poll)
            held.append(s)
        answer = raw_request(env.pair.port_a, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return answer if answer[9:12] == b"503" else None

    ha = env.pair.base / "logs" / "node-a" / "ha.log"
    try:
        answer = wait_for(busy_at_cap, 15, what="503 busy at the cap")
        assert b'"busy"' in answer
        assert ha.read_text().count("connection limit reached") == 1
    finally:
        for s in held:
            s.close()
    wait_for(lambda: "connections back under the limit" in ha.read_text(), 15, what="the end of the condition")
    assert env.a.healthy()


def test_a_slow_head_is_closed_after_head_timeout(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair(extra=LIMITS + "head_timeout_s = 2\n")
    env.a.start()
    with SlowClients(env.pair.port_a, 20) as attack:  # far below the cap: only the deadline closes them
        attack.reopen.clear()
        wait_for(lambda: not attack.opened_at, 2 + 20, what="the slow connections closed")
    assert len(attack.lifetimes) == 20 and min(attack.lifetimes) >= 1.5
    assert env.a.healthy()


def test_malformed_heads_do_not_flood_the_output(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    env.a.start()
    before = env.a.log.stat().st_size
    for i in range(200):
        answer = raw_request(
            env.pair.port_a, b"GET /v1/status HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: %d\r\n\r\n" % i
        )
        assert answer.split(b" ", 2)[1] == b"400", answer[:100]
    assert env.a.healthy()
    out = env.a.output()
    assert env.a.log.stat().st_size - before < 2000 and "Traceback" not in out, out[-1000:]


def test_rejected_requests_are_logged_once_per_client_and_interval(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair(extra=LIMITS + "log_rate_s = 3\n")
    env.a.start()
    ha = env.pair.base / "logs" / "node-a" / "ha.log"
    size0 = ha.stat().st_size
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", env.pair.port_a, timeout=10)
    path = "/v1/status/" + "A" * 4000
    n, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < 4:
        conn.request("GET", path, headers={"Authorization": "Bearer wrong"})
        r = conn.getresponse()
        r.read()
        assert r.status == 401
        n += 1
    conn.close()

    def logged() -> list[str]:
        return [ln for ln in ha.read_text().splitlines() if "rejected request" in ln]

    def held() -> int:
        return sum(int(ln.split("more=")[1].split()[0]) for ln in logged() if "more=" in ln)

    wait_for(lambda: 1 + held() == n, 15, what=f"all {n} rejected requests counted in the HA log")
    lines = logged()
    assert len(lines) <= 4, lines
    assert all(len(ln) < 400 for ln in lines), "a logged path is at most ~200 characters"
    written = ha.stat().st_size - size0
    assert written < 2000, f"{n} rejected requests wrote {written} bytes"
    print(f"\nflood: {n} unauthenticated requests in 4 s, {written} bytes of HA log ({written * 15} bytes/min)")


def test_bad_bodies_are_400_not_500(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair(extra=LIMITS + "max_body_bytes = 65536\n")
    env.a.start()
    url, tok = f"http://127.0.0.1:{env.pair.port_a}/v1", env.a.token
    deep = ("[" * 5000 + "]" * 5000).encode()
    nested_obj = json.dumps({"fingerprint": "f", "raised_at": "r", "diagnosis": json.loads("[" * 200 + "]" * 200)})
    cases = [
        ("/diagnose", b"[1, 2]"),
        ("/diagnose", b'{"fix": "yes"}'),
        ("/diagnose", b'{"alarm": []}'),
        ("/alarms/diagnosis", deep),
        ("/alarms/diagnosis", nested_obj.encode()),
        ("/alarms/diagnosis", b'{"fingerprint": 1}'),
        ("/alarms/diagnosis", b"\xff\xfe not json"),
        ("/diag", b'"stat"'),
        ("/diag", b"{}"),
    ]
    for path, body in cases:
        status, answer = http(url + path, tok, body)
        assert status == 400, (path, body[:40], status, answer[:200])
        assert json.loads(answer)["error"]["code"] == "bad_request"
    for path, body in [("/tree", pack([1, 2])), ("/files", pack({"dir": 5})), ("/tree", b"\xc1")]:
        status, answer = http(url + path, tok, body, MSGPACK)
        assert status == 400, (path, status, answer[:200])
    status, answer = http(url + "/changes?since=x", tok)
    assert status == 400, answer
    status, answer = http(url + "/alarms/diagnosis", tok, b"{" + b" " * 70000 + b"}")
    assert status == 413 and json.loads(answer)["error"]["code"] == "too_large"
    assert env.a.healthy()


class HugeInfo(FakePeer):
    """A fake active whose answers (/v1/info first) are `size` bytes, sent in chunks (never held whole)."""

    def __init__(self, port: int, size: int) -> None:
        super().__init__(port)
        self.size = size
        self.sent = 0

    async def info(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": MSGPACK})
        await resp.prepare(request)
        n = self.size - 5
        await resp.write(b"\xc6" + n.to_bytes(4, "big"))  # msgpack bin32 of n bytes
        chunk = b"\0" * (1 << 20)
        left = n
        while left > 0:
            await resp.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
            self.sent += len(chunk)
        await resp.write_eof()
        return resp

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/v1/{what:.*}", self.info)  # every answer is huge


@pytest.fixture
def huge_info(make_pair) -> Iterator[tuple[PairEnv, HugeInfo]]:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    with HugeInfo(env.pair.port_a, 400 << 20) as fake:
        yield env, fake


def test_a_huge_answer_from_the_peer_is_refused(huge_info: tuple[PairEnv, HugeInfo]) -> None:
    env, fake = huge_info
    env.b.start()
    assert env.b.proc is not None

    def peer_error() -> Any:
        status, body = http(f"http://127.0.0.1:{env.pair.port_b}/v1/status?brief=1", env.b.token)
        return status == 200 and json.loads(body)["peer_error"]

    err = wait_for(peer_error, 60, what="the standby to report the huge answer")
    assert err["cause"] == "sync_error" and "more than" in err["message"], err
    peak = rss_kib(env.b.proc.pid, "VmHWM")
    assert peak < 300 << 10, f"standby peak RSS {peak} KiB"
    assert fake.sent < 200 << 20, "the standby stopped reading past its limit"
    print(f"\nhuge /v1/info: standby peak RSS {peak / 1024:.0f} MiB, {fake.sent >> 20} MiB sent before it hung up")


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("head_timeout_s = inf", "limits.head_timeout_s"),
        ("idle_timeout_s = 5", "limits.idle_timeout_s"),
        ("body_timeout_s = nan", "limits.body_timeout_s"),
        ("max_connections = 3", "limits.max_connections"),
        ("max_body_bytes = 1e300", "limits.max_body_bytes"),
        ("max_response_bytes = 0", "limits.max_response_bytes"),
        ("log_rate_s = -1", "limits.log_rate_s"),
        ("max_sockets = 5", "limits.max_sockets"),
    ],
)
def test_limits_are_validated(base: Path, line: str, key: str) -> None:
    from hasync.demo import write_pair
    from hasync.errors import ConfigError

    pair = write_pair(base, extra=LIMITS + line + "\n")
    with pytest.raises(ConfigError) as err:
        config.load(pair.config_a)
    assert f": {key}: " in str(err.value) and "\n" not in str(err.value)


def test_the_connection_cap_fits_the_open_file_limit() -> None:
    import subprocess
    import sys

    code = (
        "from hasync.agent.guard import ConnectionGuard; from hasync.config import LimitsSection;"
        "g = ConnectionGuard(LimitsSection(max_connections=4000)); g.fit_to_fd_limit(); print(g.cap)"
    )

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, 1024))

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=limit, check=True)
    assert r.stdout.strip() == str(1024 - 256)  # the soft limit raised to the hard one, 256 kept for files


def test_client_dropping_mid_body_leaves_no_traceback_in_the_ha_log(make_pair) -> None:  # type: ignore[no-untyped-def]
    """Issue 9 #5/#6, variant: a client (the token holder: the peer, a CLI killed mid-request) that sends a
    whole head and part of a body, then goes away, made aiohttp log "ERROR [http] Error handling request"
    with a 40-line ConnectionResetError traceback (about 2.2 KB) into the HA log, once per connection and
    without any rate limit; `diagnose` and `collect` count those as errors. Now the guard's middleware
    takes it for what it is, the client's doing: one INFO line per client and limits.log_rate_s."""
    env: PairEnv = make_pair()
    env.b.start()
    head = (
        "POST /v1/diag HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {env.b.token}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{"
    ).encode()
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", env.pair.port_b), timeout=5) as s:
            s.sendall(head)
            time.sleep(0.2)  # the handler is reading the body when the client goes away
    url = f"http://127.0.0.1:{env.pair.port_b}/v1/diag"
    body = json.dumps({"op": "roots"}).encode()
    # A request sent after the drops is answered: the agent's event loop has handled the drops before it.
    wait_for(lambda: http(url, env.b.token, body)[0] == 200, 10, what="the agent to answer after the five drops")
    out = env.b.output()
    assert "Traceback" not in out and "Error handling request" not in out, out[-2500:]
    assert out.count("went away before its answer") <= 1, out[-2500:]  # rate-limited, not one per connection
