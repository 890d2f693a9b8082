"""Two hosts on one machine: two network namespaces joined by a veth pair, one hasync agent in each.

Everything this module creates is named so that it can be found again after a crash:
namespaces `hasync-a-<pid>-<n>` / `hasync-b-<pid>-<n>` (pid of the pytest process), work dirs
`<tmp>/hasync-netns-<pid>-*`. The veth ends are created directly inside the namespaces, so they
never exist in the root namespace and die with them; nftables rules live in a namespace too.
Traffic only ever goes to the two private addresses inside the namespaces (ADDR) and to the
namespaces' own 127.0.0.1.

The test process talks HTTP to the agents from a worker thread that has entered the agent's
namespace with setns(2) (a network namespace is per thread), which is much faster than a
`ip netns exec` subprocess per request. CLI commands do run through `ip netns exec`, as an
operator on that host would run them.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from hasync.demo import write_pair
from pairlib import ROOT, cleanup_base, plain_ids, snapshot, temp_files, wait_for

T = TypeVar("T")

NS_RE = re.compile(r"^hasync-[ab]-(\d+)-(\d+)$")
BASE_PREFIX = "hasync-netns-"
SUBNET = "10.231.0"
ADDR = {"a": f"{SUBNET}.1", "b": f"{SUBNET}.2"}
VETH = {"a": "veth-a", "b": "veth-b"}  # names inside the namespaces only
PORT = 28443  # the same port on both hosts, as in production: each host has its own address
RECEIVER_PORT = 28480
CLONE_NEWNET = 0x40000000
# A fault must be seen within two intervals; this is the slack on top for polling the alarm
# over HTTP (0.05 s steps) and for the check's own duration (at most its timeout, interval / 2,
# which the two-interval budget already covers).
POLL_SLACK_S = 0.5

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_counter = iter(range(1, 1_000_000))
# Everything created in this process, torn down at exit too, in case a fixture's teardown never ran
# (e.g. the run was interrupted between setup and teardown).
_live: list[NsPair] = []
_live_lock = threading.Lock()


def run(argv: list[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}: {r.stderr.strip()}")
    return r


def enter_netns(name: str) -> None:
    """Move the calling thread into network namespace `name` (setns(2) is per thread for CLONE_NEWNET)."""
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def netns_names() -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_is_pytest(pid: int) -> bool:
    try:
        return b"pytest" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class Netns:
    """One network namespace: a host of the pair."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._pool: ThreadPoolExecutor | None = None

    def create(self) -> None:
        run(["ip", "netns", "add", self.name])
        run(["ip", "-n", self.name, "link", "set", "lo", "up"])

    def argv(self, argv: list[str], user: tuple[int, int] | None = None) -> list[str]:
        """`argv` run inside the namespace, as `user` when given (setpriv after the namespace switch,
        which needs root)."""
        drop = [] if user is None else ["setpriv", f"--reuid={user[0]}", f"--regid={user[1]}", "--clear-groups"]
        return ["ip", "netns", "exec", self.name, *drop, *argv]

    def ip(self, *args: str) -> None:
        run(["ip", "-n", self.name, *args])

    def nft(self, script: str) -> None:
        r = subprocess.run(
            ["ip", "netns", "exec", self.name, "nft", "-f", "-"], input=script, capture_output=True, text=True
        )
        if r.returncode != 0:
            raise RuntimeError(f"nft in {self.name}: {r.stderr.strip()}")

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` in a thread that lives in this namespace (its sockets are this host's)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(2, f"ns-{self.name}", initializer=enter_netns, initargs=(self.name,))
        return self._pool.submit(fn, *args, **kwargs).result()

    def http(
        self, url: str, token: str | None = None, timeout: float = 5.0, data: bytes | None = None
    ) -> tuple[int | None, bytes]:
        """GET (or POST `data`) inside the namespace: (status, body bytes); (None, error) without an answer."""

        def go() -> tuple[int | None, bytes]:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            if data is not None:
                headers["Content-Type"] = "application/json"
            req = urllib.request.Request(url, data=data, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=timeout) as r:
                    return int(r.status), r.read()
            except urllib.error.HTTPError as e:
                return int(e.code), e.read()
            except OSError as e:
                return None, str(e).encode()

        return self.call(go)

    def pids(self) -> list[int]:
        out = run(["ip", "netns", "pids", self.name], check=False).stdout
        return [int(p) for p in out.split()]

    def delete(self) -> None:
        """Kill whatever still runs inside, let our threads go, delete the namespace (the veth goes with it)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._pool is not None:
            # The worker threads hold a reference to the namespace: they must end before it can go.
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        deadline = time.monotonic() + 5
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        run(["ip", "netns", "delete", self.name], check=False)


def cleanup_stale() -> list[str]:
    """Remove what a previous, crashed run left: its namespaces (and their processes and veth),
    its tmpfs mounts and work dirs. A run still in progress (its pytest pid alive) is left alone."""
    removed: list[str] = []
    me = os.getpid()

    def stale(pid: int) -> bool:
        return pid != me and not _pid_is_pytest(pid)

    for name in netns_names():
        m = NS_RE.match(name)
        if m and stale(int(m.group(1))):
            Netns(name).delete()
            removed.append(f"netns {name}")
    tmp = Path(os.environ.get("HASYNC_TEST_TMP", tempfile.gettempdir())).resolve()
    pat = re.compile(re.escape(str(tmp / BASE_PREFIX)) + r"(\d+)-")
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for target in sorted(mounts, key=len, reverse=True):  # nested mounts first
        m = pat.match(target.replace("\\040", " "))
        if m and stale(int(m.group(1))):
            run(["umount", "-l", target], check=False)
            removed.append(f"mount {target}")
    for d in tmp.glob(BASE_PREFIX + "*"):
        m = pat.match(str(d) + "/")
        if m and stale(int(m.group(1))):
            cleanup_base(d)
            removed.append(f"dir {d}")
    return removed


# -- agents -----------------------------------------------------------------------------------


@dataclass
class NsAgent:
    """One `hasync agent` running inside its host's namespace."""

    node: str  # "a" (active) or "b" (standby)
    ns: Netns
    config: Path
    token: str
    user: tuple[int, int] | None
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return ADDR[self.node]

    @property
    def url(self) -> str:
        return f"http://{self.addr}:{PORT}"

    @property
    def log(self) -> Path:
        return self.config.with_suffix(".out")

    def start(self, wait: bool = True) -> NsAgent:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.ns.argv([sys.executable, "-m", "hasync", "agent", "-c", str(self.config)], self.user),
                stdout=out,
                stderr=out,
                env=env,
                cwd=self.config.parent,
            )
        if wait:
            wait_for(self.healthy, 30, interval=0.05, what=f"agent {self.config.name} to answer /healthz")
        return self

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"agent {self.config.name} exited with {self.proc.returncode}:\n{self.output()}")
        status, _ = self.ns.http(f"{self.url}/healthz", timeout=1)
        return status == 200

    def get(self, path: str, timeout: float = 5.0) -> Any:
        """An authenticated GET of this agent's API, decoded (JSON, or the text of /metrics)."""
        status, body = self.ns.http(f"{self.url}{path}", self.token, timeout)
        if status != 200:
            raise AssertionError(f"GET {path} on node-{self.node}: {status} {body[:300]!r}")
        return body.decode() if path.startswith("/metrics") else json.loads(body)

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return ""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10) -> float:
        """SIGTERM; returns how long the agent took to stop."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"agent {self.config.name} did not stop within {timeout} s") from None
        return time.monotonic() - t0

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# -- a webhook receiver inside a namespace --------------------------------------------------------


class NsWebhook:
    """Records the JSON bodies (and idempotency keys) POSTed to it; listens on a host's address
    inside that host's namespace, so that agents reach it over the pair's own network."""

    def __init__(self, ns: Netns, host: str, port: int = RECEIVER_PORT) -> None:
        self.ns, self.host, self.port = ns, host, port
        self.requests: list[tuple[str, str, Any]] = []
        recv = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                recv.requests.append((self.path, self.headers.get("Idempotency-Key", ""), json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"status": "success"}')

            def log_message(self, *args: Any) -> None:  # keep pytest's output clean
                pass

        # The listening socket is created in a thread inside the namespace, so it is that host's socket.
        self.server: ThreadingHTTPServer = ns.call(ThreadingHTTPServer, (host, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    def events(self) -> list[tuple[str, str, str]]:
        """(event, fingerprint, raised_at) of every webhook delivery, in arrival order."""
        return [(b["event"], b["alarm"]["fingerprint"], b["alarm"]["raised_at"]) for _, _, b in list(self.requests)]

    def keys(self) -> list[str]:
        return [k for _, k, _ in list(self.requests)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the pair -------------------------------------------------------------------------------------


@dataclass
class NsPair:
    base: Path
    ns: dict[str, Netns]
    a: NsAgent
    b: NsAgent
    user: tuple[int, int] | None
    interval_s: float
    mounts: list[Path] = field(default_factory=list)
    webhooks: list[NsWebhook] = field(default_factory=list)

    @property
    def src(self) -> Path:
        return self.base / "data" / "node-a"

    @property
    def dst(self) -> Path:
        return self.base / "data" / "node-b"

    def agent(self, node: str) -> NsAgent:
        return self.a if node == "a" else self.b

    def start(self) -> None:
        self.a.start(wait=False)
        self.b.start(wait=False)
        for agent in (self.a, self.b):
            wait_for(agent.healthy, 30, interval=0.05, what=f"agent node-{agent.node} to answer /healthz")

    # -- commands run on a host, as its operator would ----------------------------------------
    def hasync(self, *args: str, node: str = "b", timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cfg = self.agent(node).config
        return subprocess.run(
            self.ns[node].argv([sys.executable, "-m", "hasync", *args, "-c", str(cfg)], self.user),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.base,
        )

    def hasync_json(self, *args: str, node: str = "b", timeout: float = 120) -> tuple[int, Any]:
        r = self.hasync(*args, "--json", node=node, timeout=timeout)
        assert r.stdout, f"hasync {' '.join(args)} printed nothing (exit {r.returncode}): {r.stderr}"
        return r.returncode, json.loads(r.stdout)

    def diagnose(self, *args: str, node: str = "b") -> tuple[int, dict[str, Any], float]:
        t0 = time.monotonic()
        code, doc = self.hasync_json("diagnose", *args, node=node, timeout=180)
        return code, doc, time.monotonic() - t0

    # -- state, read over the pair's network ------------------------------------------------------
    def node_alarms(self, node: str) -> list[dict[str, Any]]:
        """The alarm records of one node's own store (empty when its agent does not answer)."""
        agent = self.agent(node)
        if not agent.running():
            return []
        status, body = agent.ns.http(f"{agent.url}/v1/alarms?all=1", agent.token, 5)
        return sorted(json.loads(body), key=lambda d: d["raised_at"]) if status == 200 else []

    def alarms(self) -> list[dict[str, Any]]:
        """Every alarm record of both nodes' stores, one per (fingerprint, raised_at): what
        `hasync alarms --all` shows. A node whose agent does not run is skipped."""
        seen: dict[tuple[str, str], dict[str, Any]] = {}
        for node in ("b", "a"):  # the standby owns the alarm: its record wins
            for doc in self.node_alarms(node):
                seen.setdefault((doc["fingerprint"], doc["raised_at"]), doc)
        return sorted(seen.values(), key=lambda d: d["raised_at"])

    def active_alarms(self) -> list[dict[str, Any]]:
        return [a for a in self.alarms() if a["cleared_at"] is None]

    def wait_alarm(self, cause: str, since: float, timeout: float | None = None) -> tuple[dict[str, Any], float]:
        """Wait for an active alarm with `cause`; returns it and the seconds since `since` (monotonic)."""
        found = wait_for(
            lambda: next((a for a in self.active_alarms() if a["cause"] == cause), None),
            timeout or 4 * self.interval_s + 10,
            interval=0.05,
            what=f"alarm 45641 with cause {cause} (active alarms: {self.active_alarms()})",
        )
        return found, time.monotonic() - since

    def wait_cleared(self, since: float, timeout: float | None = None) -> float:
        wait_for(
            lambda: not self.active_alarms(),
            timeout or 4 * self.interval_s + 15,
            interval=0.05,
            what=f"alarm cleared (active: {self.active_alarms()})",
        )
        return time.monotonic() - since

    def metric(self, node: str, series: str) -> float:
        """One sample of the node's /metrics, e.g. 'hasync_transferred_bytes_total{direction="received"}'."""
        for line in self.agent(node).get("/metrics").splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
        raise AssertionError(f"{series} not in /metrics of node-{node}")

    def received(self) -> tuple[float, float]:
        """(files, bytes) the standby has received since its agent started."""
        return (
            self.metric("b", 'hasync_transferred_files_total{direction="received"}'),
            self.metric("b", 'hasync_transferred_bytes_total{direction="received"}'),
        )

    # -- faults -----------------------------------------------------------------------------------
    def link(self, node: str, up: bool) -> None:
        """`ip link set <veth> up|down` on one host: the cable pulled out of that host."""
        self.ns[node].ip("link", "set", VETH[node], "up" if up else "down")

    def partition(self, node: str = "a") -> None:
        """A silent partition: that host drops every packet from and to its peer (nftables, inside its
        namespace). No RST, no ICMP error: connections just hang."""
        peer = ADDR["b" if node == "a" else "a"]
        self.ns[node].nft(
            "table inet hasync_partition {\n"
            f"  chain input {{ type filter hook input priority 0; policy accept; ip saddr {peer} drop; }}\n"
            f"  chain output {{ type filter hook output priority 0; policy accept; ip daddr {peer} drop; }}\n"
            "}\n"
        )

    def heal(self, node: str = "a") -> None:
        self.ns[node].nft("delete table inet hasync_partition\n")

    def shape(self, node: str, rate: str | None) -> None:
        """Limit what a host sends on its veth to `rate` (tc tbf), e.g. '800mbit'; None removes the limit.
        Makes a transfer last long enough to be interrupted in its middle."""
        dev = VETH[node]
        if rate is None:
            run(["ip", "netns", "exec", self.ns[node].name, "tc", "qdisc", "del", "dev", dev, "root"], check=False)
        else:
            run(["ip", "netns", "exec", self.ns[node].name, "tc", "qdisc", "replace", "dev", dev, "root",
                 "tbf", "rate", rate, "burst", "512kb", "latency", "400ms"])  # fmt: skip

    def mount_tmpfs(self, path: Path, size: str) -> None:
        path.mkdir(parents=True, exist_ok=True)
        run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "hasync-netns", str(path)])
        self.mounts.append(path)

    def webhook(self, node: str = "b") -> NsWebhook:
        hook = NsWebhook(self.ns[node], ADDR[node])
        self.webhooks.append(hook)
        return hook

    # -- trees --------------------------------------------------------------------------------------
    def tree(self, node: str) -> dict[str, tuple[Any, ...]]:
        """Every path of a node's sync dirs: type, mode, size, SHA-256 of the content (owner when root)."""
        return snapshot(self.src if node == "a" else self.dst, with_owner=self.user is None)

    def wait_identical(self, timeout: float = 60) -> float:
        """Wait until the standby's tree is byte-identical to the active's; returns the seconds taken."""
        t0 = time.monotonic()
        try:
            wait_for(lambda: self.tree("a") == self.tree("b"), timeout, interval=0.1, what="identical trees")
        except AssertionError:
            a, b = self.tree("a"), self.tree("b")
            diff = {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}
            raise AssertionError(
                f"trees differ in {len(diff)} path(s): {dict(list(diff.items())[:8])}\n"
                f"--- node-a:\n{self.a.output()}\n--- node-b:\n{self.b.output()}"
            ) from None
        assert not temp_files(self.dst), temp_files(self.dst)
        return time.monotonic() - t0

    def chown_all(self) -> None:
        if self.user is not None:
            for dirpath, dirnames, filenames in os.walk(self.base):
                for n in [*dirnames, *filenames]:
                    os.lchown(os.path.join(dirpath, n), *self.user)
            os.lchown(self.base, *self.user)

    # -- teardown -----------------------------------------------------------------------------------
    def teardown(self) -> list[str]:
        """Kill the agents, close receivers, delete both namespaces, unmount, remove the work dir.
        Returns what could not be removed (empty when all is gone)."""
        problems: list[str] = []
        for agent in (self.a, self.b):
            with contextlib.suppress(Exception):
                agent.kill9()
        for hook in self.webhooks:
            with contextlib.suppress(Exception):
                hook.close()
        for ns in self.ns.values():
            ns.delete()
        left = set(netns_names())
        problems += [f"netns {ns.name} still exists" for ns in self.ns.values() if ns.name in left]
        for m in reversed(self.mounts):
            if run(["umount", str(m)], check=False).returncode != 0:
                run(["umount", "-l", str(m)], check=False)
        mounted = Path("/proc/self/mounts").read_text()
        problems += [f"{m} still mounted" for m in self.mounts if f" {m} " in mounted]
        if os.environ.get("HASYNC_NETNS_KEEP") == "1":
            print(f"kept {self.base} (HASYNC_NETNS_KEEP=1): configs, data, logs/*/ha.log, node-*.out")
        else:
            cleanup_base(self.base)
        with _live_lock:
            if self in _live:
                _live.remove(self)
        return problems


def _config_for(path: Path, node: str, peer_timeout_s: float, check: str, sync: str) -> None:
    """Turn write_pair's 127.0.0.1 config into this host's: its own address, the peer's address, and
    the test's timing keys inserted into the sections write_pair already wrote."""
    peer = "b" if node == "a" else "a"
    text = path.read_text()
    subs = [
        (f'listen = "127.0.0.1:{PORT}"', f'listen = "{ADDR[node]}:{PORT}"'),
        (f'address = "127.0.0.1:{PORT}"', f'address = "{ADDR[peer]}:{PORT}"\ntimeout_s = {peer_timeout_s}'),
        ("interval_s = ", f"{check}interval_s = "),
        ('exclude = ["*.swp", "*.tmp"]', f'exclude = ["*.swp", "*.tmp"]\n{sync}'),
    ]
    for old, new in subs:
        assert text.count(old) == 1, f"{path.name}: expected one {old!r}"
        text = text.replace(old, new)
    path.write_text(text)


def new_pair(
    *,
    unprivileged: bool = False,
    interval_s: float = 2.0,
    peer_timeout_s: float = 3.0,
    check: str = "",
    sync: str = "retry_s = 2\n",
    extra: str = "",
    env_b: dict[str, str] | None = None,
) -> NsPair:
    """Two namespaces joined by a veth pair, configs for an agent in each (not started yet).

    `check`/`sync`: extra lines for the [check] and [sync] sections; `extra`: appended TOML (e.g.
    [alarms] with notifiers); `env_b`: extra environment of the standby's agent."""
    n = next(_counter)
    pid = os.getpid()
    ns = {node: Netns(f"hasync-{node}-{pid}-{n}") for node in ("a", "b")}
    tmp = os.environ.get("HASYNC_TEST_TMP", tempfile.gettempdir())
    base = Path(tempfile.mkdtemp(prefix=f"{BASE_PREFIX}{pid}-{n}-", dir=tmp))
    base.chmod(0o755)  # reachable by the unprivileged agents
    user = plain_ids() if unprivileged and ROOT else None
    pair = write_pair(base, port_a=PORT, port_b=PORT, interval_s=interval_s, extra=extra)
    token = (base / "secrets" / "pair.token").read_text().strip()
    env = NsPair(
        base,
        ns,
        NsAgent("a", ns["a"], pair.config_a, token, user),
        NsAgent("b", ns["b"], pair.config_b, token, user, dict(env_b or {})),
        user,
        interval_s,
    )
    with _live_lock:
        _live.append(env)
    for node, cfg in (("a", pair.config_a), ("b", pair.config_b)):
        _config_for(cfg, node, peer_timeout_s, check, sync)
    for x in ns.values():
        x.create()
    # Both ends are created inside the namespaces: nothing ever appears in the root namespace.
    run(["ip", "link", "add", VETH["a"], "netns", ns["a"].name, "type", "veth",
         "peer", "name", VETH["b"], "netns", ns["b"].name])  # fmt: skip
    for node in ("a", "b"):
        ns[node].ip("addr", "add", f"{ADDR[node]}/24", "dev", VETH[node])
        ns[node].ip("link", "set", VETH[node], "up")
    return env


def _teardown_all() -> None:
    with _live_lock:
        pairs = list(_live)
    for p in pairs:
        with contextlib.suppress(Exception):
            p.teardown()


atexit.register(_teardown_all)
