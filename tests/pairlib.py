"""Test helpers: real agent processes on 127.0.0.1, tree comparison, waiting.

The pair harness of the tests and of the benchmarks (bench/replication.py, bench/check_cost.py,
bench/hostile_clients.py, bench/collect_memory.py import it from here)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from aiohttp import web
from ephemeral_port_reserve import reserve

from hasync.demo import Pair, write_pair

ROOT = os.geteuid() == 0
PLAIN_USER = "nobody"


def plain_ids() -> tuple[int, int]:
    pw = pwd.getpwnam(PLAIN_USER)
    return pw.pw_uid, pw.pw_gid


def wait_for(pred: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last value: {last!r})")


def snapshot(root: Path, with_owner: bool = False) -> dict[str, tuple[Any, ...]]:
    """Every path under `root`: type, permission bits, content SHA-256 or link target."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue  # a temp file renamed away while we looked
            owner = (st.st_uid, st.st_gid) if with_owner else ()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(full), *owner)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode), *owner)
            else:
                try:
                    with open(full, "rb") as f:
                        digest = hashlib.file_digest(f, "sha256").hexdigest()
                except PermissionError:
                    digest = "unreadable"
                except FileNotFoundError:
                    continue
                out[rel] = ("f", stat.S_IMODE(st.st_mode), st.st_size, digest, *owner)
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return out


def temp_files(root: Path) -> list[str]:
    return [os.path.join(d, n) for d, ds, fs in os.walk(root) for n in fs + ds if n.startswith(".hasync-tmp-")]


@dataclass
class AgentProc:
    config: Path
    port: int
    token: str
    user: tuple[int, int] | None = None
    proc: subprocess.Popen[bytes] | None = None
    wrap: list[str] = field(default_factory=list)  # a command that execs the agent (e.g. in a user namespace)
    # In its own session: a Ctrl-C at the terminal reaches the caller alone, which then stops the agent
    # (the benchmarks do, in order; pytest kills the agents of a test in its teardown).
    new_session: bool = False
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.config.with_suffix(".out")

    def start(self, wait: bool = True) -> AgentProc:
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs.update(user=self.user[0], group=self.user[1], extra_groups=[])
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*self.wrap, sys.executable, "-m", "hasync", "agent", "-c", str(self.config)],
                stdout=out,
                stderr=out,
                env=env,
                cwd=self.config.parent,
                start_new_session=self.new_session,
                **kwargs,
            )
        if wait:
            wait_for(self.healthy, 30, what=f"agent {self.config.name} to answer /healthz")
        return self

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"agent {self.config.name} exited with {self.proc.returncode}:\n{self.output()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"agent {self.config.name} did not stop within {timeout} s") from None

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class PairEnv:
    pair: Pair
    a: AgentProc
    b: AgentProc
    user: tuple[int, int] | None

    @property
    def src(self) -> Path:
        return self.pair.data_a

    @property
    def dst(self) -> Path:
        return self.pair.data_b

    def hasync(
        self, *args: str, node: str = "b", check: bool = False, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        cfg = self.pair.config_a if node == "a" else self.pair.config_b
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs.update(user=self.user[0], group=self.user[1], extra_groups=[])
        r = subprocess.run(
            [sys.executable, "-m", "hasync", *args, "-c", str(cfg)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.pair.base,
            **kwargs,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"hasync {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r

    def in_sync(self, exclude: frozenset[str] = frozenset()) -> bool:
        """The trees are equal, leaving out the relative paths in `exclude` on both sides."""
        a, b = snapshot(self.src), snapshot(self.dst)
        return {k: v for k, v in a.items() if k not in exclude} == {k: v for k, v in b.items() if k not in exclude}

    def wait_in_sync(self, timeout: float = 30, exclude: frozenset[str] = frozenset()) -> None:
        try:
            wait_for(lambda: self.in_sync(exclude), timeout, what="standby tree == active tree")
        except AssertionError:
            a, b = snapshot(self.src), snapshot(self.dst)
            diff = {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
            raise AssertionError(
                f"trees differ: {dict(list(diff.items())[:10])}\n--- a:\n{self.a.output()}\n--- b:\n{self.b.output()}"
            ) from None

    def standby_in_sync(self) -> bool:
        """The standby's agent says it is in sync (`hasync status --json` on node b)."""
        r = self.hasync("status", "--json")
        return r.returncode == 0 and json.loads(r.stdout).get("in_sync") is True

    def wait_standby_in_sync(self, timeout: float = 30) -> None:
        """The trees are equal on disk and the standby's agent says it is in sync.

        Equal trees alone are not enough before editing the standby's copy: the last file is renamed
        into place before the standby's first reconcile ends, and its file watcher only starts when that
        reconcile ends (docs/architecture.md, "Standby side"). The agent says in sync in the same step
        that starts the watcher, whose inotify watches are set before the agent answers the next request.
        """
        self.wait_in_sync(timeout)
        wait_for(self.standby_in_sync, timeout, interval=0.1, what="the standby's status to say in sync")

    def chown_all(self) -> None:
        if self.user is not None:
            for dirpath, dirnames, filenames in os.walk(self.pair.base):
                for n in [*dirnames, *filenames]:
                    os.lchown(os.path.join(dirpath, n), *self.user)
            os.lchown(self.pair.base, *self.user)

    def stop(self) -> None:
        for agent in (self.a, self.b):
            try:
                agent.kill9()
            except Exception:
                pass


def raw_request(port: int, head: bytes) -> bytes:
    """Send `head` as is (bytes no HTTP library would send) and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def make_base() -> Path:
    """A temp dir that an unprivileged agent can reach (pytest's tmp_path is mode 700 under root)."""
    base = Path(tempfile.mkdtemp(prefix="hasync-test-", dir=os.environ.get("HASYNC_TEST_TMP", "/tmp")))
    base.chmod(0o755)
    return base


def new_pair(
    base: Path,
    unprivileged: bool = False,
    extra: str = "",
    interval_s: float = 60,
    dirs: tuple[str, ...] = ("conf", "udf"),
) -> PairEnv:
    # Ports held in TIME_WAIT: no other process's bind(0) or connect() takes one before the agent
    # binds it (with SO_REUSEADDR), nor while an agent is stopped between restarts in a test
    # (other suites on the same machine pick free ports all the time).
    port_a, port_b = reserve("127.0.0.1"), reserve("127.0.0.1")
    pair = write_pair(base, port_a=port_a, port_b=port_b, interval_s=interval_s, extra=extra, dirs=dirs)
    token = (base / "secrets" / "pair.token").read_text().strip()
    user = plain_ids() if unprivileged and ROOT else None
    env = PairEnv(
        pair,
        AgentProc(pair.config_a, pair.port_a, token, user),
        AgentProc(pair.config_b, pair.port_b, token, user),
        user,
    )
    return env


def cleanup_base(base: Path) -> None:
    for dirpath, dirnames, _ in os.walk(base):
        for d in dirnames:
            try:
                os.chmod(os.path.join(dirpath, d), 0o755)
            except OSError:
                pass
    shutil.rmtree(base, ignore_errors=True)


class FakePeer:
    """A fake peer agent on 127.0.0.1:`port`, served by aiohttp on its own thread and event loop, for
    tests of what the real agent does with hostile answers. Subclasses add their routes in `routes`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.runner: web.AppRunner | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        async def start() -> None:
            app = web.Application()
            self.routes(app)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

        self.thread.start()
        asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.runner is not None
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
