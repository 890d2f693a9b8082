"""Replication benchmark: hasync side by side with rsync (daemon mode) and lsyncd on one machine.

What is measured (all on 127.0.0.1, both ends on the same file system, data in the page cache):

1. Initial full sync of a seeded reference tree (10,000 small files of 0.5-8 KiB in 100 folders, 200
   medium files of 0.1-1 MiB, 20 large files of 5-50 MiB) into an empty destination:
   - hasync: the active agent is started on the source first and must have scanned/hashed the tree
     (it answers ``GET /healthz``, its ``/v1/info`` carries the sync dir's Merkle root and
     ``hasync status`` exits 0); then ``hasync sync --once -c node-b.toml`` is timed as a whole
     process, with no standby agent running, until it exits 0;
   - ``rsync -a --delete src/ rsync://127.0.0.1:N/mod/`` against an ``rsync --daemon`` we start;
   - the same with ``--fsync`` (hasync makes every file durable before it is visible; plain rsync does not).
   Target: hasync / rsync(plain) <= 1.0.
2. No-change re-sync of a 100,000-file tree (1000 folders x 100 files of 0.5-8 KiB), both sides already
   in sync: ``hasync sync --once`` as a whole process, start-up included, (a) with no standby agent
   running (the command scans the local tree itself, with its hash cache) and (b) with the standby
   agent running (the command asks the agent), against an ``rsync -a --delete`` no-change run.
   One warm-up run each, then the median of ``--repeat`` runs. Target: hasync / rsync <= 0.8.
3. One-file change propagation with both agents running: ``--changes`` times, a small file of the
   reference tree is rewritten in place with new content on the active, and the bench polls the
   standby's copy every ~1 ms until it reads the new content. p50 / p99 of that delay.
   Target: p50 <= 50 ms, p99 <= 200 ms. The same for lsyncd (``delay = 0``, default.rsync to the
   rsync daemon), for comparison.
4. Peak RSS (``VmHWM`` of ``/proc/PID/status``) of the standby agent that performs the initial sync of
   the 100,000-file tree and then holds it (and serves the ``sync --once`` runs of 2b).
   Target: <= 150 MB.

Besides wall time, each timed run records the CPU time of all processes involved (the client process,
plus the hasync agents resp. the rsync daemon and its children).

Generated trees live under ``<work>/trees`` and are reused by later runs with the same seed and size;
everything else lives under ``<work>/run``, which is recreated on each run (and removed at the end
unless ``--keep``). Results: a table on stdout and ``bench/out/replication.json``.

Run:  .venv/bin/python bench/replication.py [--quick] [--only 1,2,3,4] [--work DIR] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import msgpack

from hasync.demo import free_port

# The pair harness is the tests' (tests/pairlib.py): one way to write a pair and run its agents.
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
from pairlib import AgentProc, new_pair, wait_for

PY = sys.executable
RSYNC = shutil.which("rsync") or "/usr/bin/rsync"
LSYNCD = shutil.which("lsyncd")
REPO = Path(__file__).resolve().parent.parent
OUT_JSON = REPO / "bench" / "out" / "replication.json"
KIB, MIB = 1024, 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
T_START = time.monotonic()

TARGET_INITIAL_RATIO = 1.0
TARGET_NOCHANGE_RATIO = 0.8
TARGET_P50_MS = 50.0
TARGET_P99_MS = 200.0
TARGET_RSS_MB = 150.0


# -- trees ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """`files` files of `min_size`..`max_size` bytes, spread evenly over `folders` folders under `prefix`."""

    prefix: str
    folders: int
    files: int
    min_size: int
    max_size: int


REF_FULL = (
    Group("small", 100, 10_000, 512, 8 * KIB),
    Group("medium", 1, 200, 100 * KIB, 1 * MIB),
    Group("large", 1, 20, 5 * MIB, 50 * MIB),
)
REF_QUICK = (
    Group("small", 10, 1_000, 512, 8 * KIB),
    Group("medium", 1, 20, 100 * KIB, 1 * MIB),
    Group("large", 1, 2, 5 * MIB, 20 * MIB),
)
MANY_FULL = (Group("many", 1000, 100_000, 512, 8 * KIB),)
MANY_QUICK = (Group("many", 100, 10_000, 512, 8 * KIB),)


@dataclass
class TreeInfo:
    path: Path
    files: int
    bytes: int
    small: list[str]  # relative paths of the small files (candidates for the change test)


def _group_paths(g: Group) -> Iterator[tuple[int, str]]:
    per = -(-g.files // g.folders)
    for i in range(g.files):
        folder = f"{g.prefix}/d{i // per:04d}" if g.folders > 1 else g.prefix
        yield i, f"{folder}/f{i:06d}.dat"


def ensure_tree(trees_dir: Path, name: str, groups: tuple[Group, ...], seed: int) -> TreeInfo:
    """The tree `name`, generated from `seed` unless an identical one is already there."""
    root = trees_dir / name
    marker = trees_dir / f"{name}.json"
    params = {"seed": seed, "groups": [asdict(g) for g in groups]}
    small = [rel for g in groups if g.max_size <= 8 * KIB for _, rel in _group_paths(g)]
    if marker.exists() and root.is_dir():
        doc = json.loads(marker.read_text())
        if doc.get("params") == params:
            note(f"reusing tree {root} ({doc['files']} files, {doc['bytes'] / MIB:.0f} MiB)")
            return TreeInfo(root, doc["files"], doc["bytes"], small)
    note(f"generating tree {root} ...")
    marker.unlink(missing_ok=True)
    if root.exists():
        shutil.rmtree(root)
    rng = random.Random(seed)
    files = total = 0
    for g in groups:
        for _, rel in _group_paths(g):
            size = rng.randint(g.min_size, g.max_size)
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                left = size
                while left:
                    n = min(left, 8 * MIB)
                    f.write(rng.randbytes(n))
                    left -= n
            files += 1
            total += size
    marker.write_text(json.dumps({"params": params, "files": files, "bytes": total}))
    note(f"generated {files} files, {total / MIB:.0f} MiB")
    return TreeInfo(root, files, total, small)


def warm(root: Path) -> None:
    """Read every file once so that both tools read from the page cache."""
    buf = bytearray(MIB)
    for dirpath, _, names in os.walk(root):
        for n in names:
            with open(os.path.join(dirpath, n), "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass


def verify_same(src: Path, dst: Path, sample: int = 300, seed: int = 0) -> None:
    """Same relative paths, sizes and modes; same content for a random sample of files."""

    def listing(root: Path) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for dirpath, dirs, names in os.walk(root):
            for n in names + dirs:
                full = os.path.join(dirpath, n)
                st = os.lstat(full)
                out[os.path.relpath(full, root)] = (st.st_size if not os.path.isdir(full) else 0, st.st_mode)
        return out

    a, b = listing(src), listing(dst)
    if a != b:
        missing = sorted(a.keys() - b.keys())[:5]
        extra = sorted(b.keys() - a.keys())[:5]
        differ = sorted(k for k in a.keys() & b.keys() if a[k] != b[k])[:5]
        raise BenchError(f"{dst} differs from {src}: missing {missing}, extra {extra}, differ {differ}")
    files = sorted(k for k, (_, mode) in a.items() if mode & 0o170000 == 0o100000)
    for rel in random.Random(seed).sample(files, min(sample, len(files))):
        if (src / rel).read_bytes() != (dst / rel).read_bytes():
            raise BenchError(f"{dst / rel}: content differs from {src / rel}")


# -- processes -----------------------------------------------------------------------------------


class BenchError(Exception):
    pass


def note(msg: str) -> None:
    print(f"[{time.monotonic() - T_START:7.1f}s] {msg}", file=sys.stderr, flush=True)


class Procs:
    """Every long-running process the bench starts; all are stopped at the end, also on Ctrl-C."""

    def __init__(self) -> None:
        self._procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []
        self._stoppers: list[Callable[[], None]] = []

    def on_stop_all(self, stop: Callable[[], None]) -> None:
        """`stop` stops processes started elsewhere (a pair's agents); stop_all calls it first."""
        self._stoppers.append(stop)

    def start(self, name: str, cmd: list[str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = open(log, "ab")  # closed in stop()
        p = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=cwd
        )
        self._procs.append((name, p, out))
        return p

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 8.0) -> None:
        for i, (name, q, out) in enumerate(self._procs):
            if q is p:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(timeout=timeout)
                    except subprocess.TimeoutExpired:
                        note(f"{name} (pid {p.pid}) did not stop within {timeout:g} s: killing it")
                        p.kill()
                        p.wait()
                out.close()
                del self._procs[i]
                return

    def stop_all(self) -> None:
        for stop in reversed(self._stoppers):
            stop()
        for _, p, _ in list(reversed(self._procs)):
            self.stop(p)


def proc_cpu_s(pid: int, children: bool = False) -> float:
    """utime+stime of a live process (plus its waited-for children), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def proc_mem_kib(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(val.split()[0])
    return out


@dataclass
class Run:
    wall_s: float
    cpu_s: float
    stdout: str = ""


def timed(
    cmd: list[str], servers: list[tuple[int, bool]] | None = None, timeout: float = 900, cwd: Path | None = None
) -> Run:
    """Run `cmd` to completion (exit 0 required); wall time and CPU time of it and of `servers`."""
    servers = servers or []
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    srv0 = sum(proc_cpu_s(pid, ch) for pid, ch in servers)
    t0 = time.perf_counter()
    cp = subprocess.run(cmd, capture_output=True, timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cp.returncode != 0:
        raise BenchError(
            f"{' '.join(cmd)} exited {cp.returncode}:\n{cp.stdout.decode()[-2000:]}{cp.stderr.decode()[-2000:]}"
        )
    if servers and any(ch for _, ch in servers):
        time.sleep(0.05)  # let the daemon reap its worker
    srv1 = sum(proc_cpu_s(pid, ch) for pid, ch in servers)
    cpu = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) + (srv1 - srv0)
    return Run(wall, cpu, cp.stdout.decode().strip())


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def reset_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


class FreshFs:
    """An empty ext4 file system (a sparse image on a loop device), made anew for each run of item 1.

    Creating files right after a mass delete is slow on ext4 (the inode allocator
    skips recently deleted inodes: `recently_deleted` in a kernel profile), and it
    is slow by a different amount each time. On a shared file system each run
    would pay for the deletions of the run before it, which adds seconds of noise
    to every tool and flattens their ratios; an empty file system per run removes
    both. Needs root, `mkfs.ext4` and `mount`; otherwise the runs reset their
    destination directory in place, and the table says so.
    """

    def __init__(self, image: Path, wanted: bool = True, size: str = "4G") -> None:
        self.image = image
        self.size = size
        self.mounted: list[Path] = []
        self.enabled = wanted and os.geteuid() == 0 and shutil.which("mkfs.ext4") is not None

    def reset(self, dst: Path) -> None:
        """Make `dst` an empty directory: the root of a fresh file system when enabled."""
        self.release()
        reset_dir(dst)
        if not self.enabled:
            return
        self.image.unlink(missing_ok=True)
        subprocess.run(["truncate", "-s", self.size, str(self.image)], check=True)
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(self.image)], check=True
        )
        subprocess.run(["mount", "-o", "loop", str(self.image), str(dst)], check=True)
        self.mounted.append(dst)
        (dst / "lost+found").rmdir()

    def release(self) -> None:
        while self.mounted:
            subprocess.run(["umount", str(self.mounted.pop())], check=False)
        self.image.unlink(missing_ok=True)


# -- hasync pair -----------------------------------------------------------------------------------

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class HasyncPair:
    """node-a (active) serving a generated tree in place; node-b (standby) writing under base/data.

    The pair and its agent processes are the tests' (pairlib.PairEnv); this adds what the bench times:
    the active's initial scan, the standby's initial sync, the client command and its CPU."""

    def __init__(self, base: Path, tree: Path, procs: Procs) -> None:
        self.base = base
        self.env = new_pair(base, dirs=("data",))
        pair = self.env.pair
        text = pair.config_a.read_text()
        old = 'path = "data/node-a/data"'
        assert old in text, "write_pair changed its layout"
        pair.config_a.write_text(text.replace(old, f"path = {json.dumps(str(tree))}"))
        (pair.data_a / "data").rmdir()
        self.config_a, self.config_b = pair.config_a, pair.config_b
        self.port_a, self.port_b = pair.port_a, pair.port_b
        self.src = tree
        self.dst = pair.data_b / "data"
        self.token = self.env.a.token
        for agent in (self.env.a, self.env.b):
            agent.new_session = True  # Ctrl-C reaches the bench, which stops the agents (Procs.stop_all)
        procs.on_stop_all(self.stop)
        self.active: subprocess.Popen[bytes] | None = None
        self.standby: subprocess.Popen[bytes] | None = None

    def _get(self, port: int, path: str) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {self.token}"}
        )
        with _OPENER.open(req, timeout=10) as resp:
            body = resp.read()
            ctype = resp.headers.get("Content-Type", "")
        return msgpack.unpackb(body, raw=False) if "msgpack" in ctype else json.loads(body)

    @staticmethod
    def _start(agent: AgentProc) -> subprocess.Popen[bytes]:
        agent.start()  # returns once it answers /healthz
        assert agent.proc is not None
        return agent.proc

    def start_active(self) -> float:
        """Start the active agent; return the seconds until it has scanned the tree and answers status."""
        t0 = time.monotonic()
        self.active = self._start(self.env.a)

        def scanned() -> bool:
            self._alive(self.active)
            try:
                return self._get(self.port_a, "/v1/info").get("roots", {}).get("data") is not None
            except (OSError, urllib.error.URLError):
                return False

        wait_for(scanned, 900, interval=0.1, what="the active agent's initial scan")
        cp = subprocess.run([PY, "-m", "hasync", "status", "-c", str(self.config_a)], capture_output=True)
        if cp.returncode != 0:
            raise BenchError(f"hasync status on the active exited {cp.returncode}: {cp.stderr.decode()}")
        return time.monotonic() - t0

    def start_standby(self, timeout: float = 900, sample: Callable[[], None] | None = None) -> float:
        """Start the standby agent; return the seconds until it reports in_sync."""
        t0 = time.monotonic()
        self.standby = self._start(self.env.b)

        def in_sync() -> bool:
            self._alive(self.standby)
            self._alive(self.active)
            if sample is not None:
                sample()
            try:
                return bool(self._get(self.port_b, "/v1/status?brief=1").get("in_sync"))
            except (OSError, urllib.error.URLError):
                return False

        wait_for(in_sync, timeout, interval=0.05, what="the standby agent to be in sync")
        return time.monotonic() - t0

    def _alive(self, p: subprocess.Popen[bytes] | None) -> bool:
        if p is None or p.poll() is not None:
            node = "a" if p is self.active else "b"
            try:
                tail = (self.base / "logs" / f"node-{node}" / "ha.log").read_text(errors="replace").splitlines()[-4:]
            except OSError:
                tail = []
            raise BenchError(
                f"agent node-{node} exited (code {None if p is None else p.returncode}); "
                f"last lines of its ha.log:\n  " + "\n  ".join(tail)
            )
        return True

    @staticmethod
    def _stop(agent: AgentProc) -> None:
        try:
            agent.stop(timeout=8.0)
        except AssertionError as exc:  # killed after the timeout
            note(str(exc))

    def stop_standby(self) -> None:
        if self.standby is not None:
            self._stop(self.env.b)
            self.standby = None

    def stop(self) -> None:
        self.stop_standby()
        if self.active is not None:
            self._stop(self.env.a)
            self.active = None

    def reset_standby(self) -> None:
        """An empty standby: no data, no hash cache, no backups."""
        assert self.standby is None
        for sub in ("state/node-b", "backup/node-b"):
            shutil.rmtree(self.base / sub, ignore_errors=True)
        reset_dir(self.dst)

    def sync_cmd(self) -> list[str]:
        return [PY, "-m", "hasync", "sync", "--once", "-c", str(self.config_b)]

    def servers(self) -> list[tuple[int, bool]]:
        return [(p.pid, False) for p in (self.active, self.standby) if p is not None]


# -- rsync daemon --------------------------------------------------------------------------------


class RsyncDaemon:
    def __init__(self, run_dir: Path, modules: list[str], procs: Procs) -> None:
        self.dir = run_dir / "rsync"
        self.port = free_port()
        self.dst = {m: self.dir / m for m in modules}
        for d in self.dst.values():
            reset_dir(d)
        conf = self.dir / "rsyncd.conf"
        text = f"uid = root\ngid = root\nuse chroot = no\nmax connections = 0\nlog file = {self.dir / 'rsyncd.log'}\n"
        for m, d in self.dst.items():
            text += f"\n[{m}]\n    path = {d}\n    read only = no\n"
        conf.write_text(text)
        self.proc = procs.start(
            "rsyncd",
            [RSYNC, "--daemon", "--no-detach", f"--config={conf}", f"--port={self.port}", "--address=127.0.0.1"],
            self.dir / "rsyncd.out",
        )
        wait_for(lambda: port_open(self.port), 10, interval=0.05, what="the rsync daemon")

    def url(self, module: str) -> str:
        return f"rsync://127.0.0.1:{self.port}/{module}/"

    def cmd(self, src: Path, module: str, *extra: str) -> list[str]:
        return [RSYNC, "-a", "--delete", *extra, f"{src}/", self.url(module)]

    def servers(self) -> list[tuple[int, bool]]:
        return [(self.proc.pid, True)]


# -- statistics and results ----------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    k = max(1, -(-len(s) * p // 100))
    return s[int(k) - 1]


def summary(runs: list[Run]) -> dict[str, Any]:
    walls = [r.wall_s for r in runs]
    return {
        "median_s": statistics.median(walls),
        "min_s": min(walls),
        "max_s": max(walls),
        "cpu_median_s": statistics.median(r.cpu_s for r in runs),
        "runs_s": walls,
        "cpu_runs_s": [r.cpu_s for r in runs],
    }


@dataclass
class Results:
    meta: dict[str, Any] = field(default_factory=dict)
    initial: dict[str, Any] = field(default_factory=dict)
    nochange: dict[str, Any] = field(default_factory=dict)
    propagation: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)


# -- the measurements ------------------------------------------------------------------------------


def bench_initial(
    res: Results, pair: HasyncPair, rsyncd: RsyncDaemon, tree: TreeInfo, repeat: int, fresh: FreshFs
) -> None:
    """(1) initial full sync into an empty destination: rsync, rsync --fsync, hasync sync --once."""
    res.initial["fresh_fs"] = fresh.enabled
    runs: dict[str, list[Run]] = {"rsync": [], "rsync_fsync": [], "hasync": []}
    for i in range(repeat):
        for variant in runs:
            warm(tree.path)
            if variant == "hasync":
                pair.reset_standby()
                cmd, servers, dst = pair.sync_cmd(), pair.servers(), pair.dst
            else:
                module = "ref" if variant == "rsync" else "ref_fsync"
                dst = rsyncd.dst[module]
                cmd = rsyncd.cmd(tree.path, module, *(["--fsync"] if variant == "rsync_fsync" else []))
                servers = rsyncd.servers()
            fresh.reset(dst)
            os.sync()  # no dirty pages of an earlier run are flushed inside the next one
            r = timed(cmd, servers)
            runs[variant].append(r)
            note(f"(1) run {i + 1}/{repeat} {variant}: {r.wall_s:.2f} s (cpu {r.cpu_s:.2f} s)")
            if i == 0:
                verify_same(tree.path, dst)
    fresh.release()
    res.initial.update(
        {
            "tree": {"files": tree.files, "bytes": tree.bytes},
            "repeat": repeat,
            **{k: summary(v) for k, v in runs.items()},
        }
    )
    res.initial["hasync_stdout"] = runs["hasync"][-1].stdout
    ratio = res.initial["hasync"]["median_s"] / res.initial["rsync"]["median_s"]
    res.initial["ratio_hasync_rsync"] = ratio
    res.initial["ratio_hasync_rsync_fsync"] = res.initial["hasync"]["median_s"] / res.initial["rsync_fsync"]["median_s"]
    res.targets.append(
        {
            "item": "(1) initial sync hasync/rsync",
            "value": ratio,
            "target": f"<= {TARGET_INITIAL_RATIO}",
            "met": ratio <= TARGET_INITIAL_RATIO,
        }
    )


def _rewrite(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _wait_content(path: Path, want: bytes, timeout: float) -> float | None:
    end = time.perf_counter() + timeout
    while True:
        try:
            with open(path, "rb") as f:
                if f.read() == want:
                    return time.perf_counter()
        except FileNotFoundError:
            pass
        if time.perf_counter() > end:
            return None
        time.sleep(0.001)


def _propagate(src: Path, dst: Path, rels: list[str], rng: random.Random, pause: float) -> dict[str, Any]:
    delays: list[float] = []
    lost = 0
    for rel in rels:
        old = (src / rel).read_bytes()
        new = old
        while new == old:
            new = rng.randbytes(rng.randint(512, 8 * KIB))
        t0 = time.perf_counter()
        _rewrite(src / rel, new)
        t1 = _wait_content(dst / rel, new, 10.0)
        if t1 is None:
            lost += 1
        else:
            delays.append((t1 - t0) * 1000)
        time.sleep(pause)
    out: dict[str, Any] = {"changes": len(rels), "not_seen_within_10s": lost}
    if delays:
        out.update(
            p50_ms=pct(delays, 50),
            p99_ms=pct(delays, 99),
            mean_ms=statistics.mean(delays),
            min_ms=min(delays),
            max_ms=max(delays),
            delays_ms=[round(d, 2) for d in delays],
        )
    return out


def bench_propagation(
    res: Results,
    pair: HasyncPair,
    rsyncd: RsyncDaemon | None,
    tree: TreeInfo,
    n: int,
    seed: int,
    run_dir: Path,
    procs: Procs,
    with_lsyncd: bool,
) -> None:
    """(3) one-file change propagation: hasync with both agents running, then lsyncd for comparison."""
    rng = random.Random(seed + 3)
    rels = [rng.choice(tree.small) for _ in range(n)]
    originals = {rel: ((tree.path / rel).read_bytes(), os.stat(tree.path / rel)) for rel in set(rels)}
    marker = tree.path.parent / f"{tree.path.name}.json"
    saved_marker = marker.read_text()
    marker.unlink()  # the tree is modified: regenerate it next time unless restored below
    try:
        t = pair.start_standby()
        note(f"(3) standby agent in sync {t:.2f} s after start; {n} one-file changes ...")
        res.propagation["hasync"] = _propagate(tree.path, pair.dst, rels, rng, 0.05)
        h = res.propagation["hasync"]
        note(f"(3) hasync: p50 {h.get('p50_ms', float('nan')):.1f} ms, p99 {h.get('p99_ms', float('nan')):.1f} ms")
        pair.stop()  # no hasync activity during the lsyncd run
        if with_lsyncd and rsyncd is not None and LSYNCD:
            res.propagation["lsyncd"] = _lsyncd(tree, rsyncd, rels, rng, run_dir, procs)
        else:
            res.propagation["lsyncd"] = {"skipped": "lsyncd not installed" if not LSYNCD else "not requested"}
    finally:
        for rel, (data, st) in originals.items():
            _rewrite(tree.path / rel, data)
            os.utime(tree.path / rel, ns=(st.st_atime_ns, st.st_mtime_ns))
        marker.write_text(saved_marker)
    h = res.propagation["hasync"]
    if "p50_ms" in h:
        res.targets.append(
            {
                "item": "(3) propagation p50 ms",
                "value": h["p50_ms"],
                "target": f"<= {TARGET_P50_MS:g}",
                "met": h["p50_ms"] <= TARGET_P50_MS and not h["not_seen_within_10s"],
            }
        )
        res.targets.append(
            {
                "item": "(3) propagation p99 ms",
                "value": h["p99_ms"],
                "target": f"<= {TARGET_P99_MS:g}",
                "met": h["p99_ms"] <= TARGET_P99_MS and not h["not_seen_within_10s"],
            }
        )


def _lsyncd(
    tree: TreeInfo, rsyncd: RsyncDaemon, rels: list[str], rng: random.Random, run_dir: Path, procs: Procs
) -> dict[str, Any]:
    d = run_dir / "lsyncd"
    d.mkdir(parents=True, exist_ok=True)
    log = d / "lsyncd.log"
    conf = d / "lsyncd.conf.lua"
    conf.write_text(
        "settings { nodaemon = true, logfile = " + json.dumps(str(log)) + " }\n"
        "sync { default.rsync, source = "
        + json.dumps(str(tree.path))
        + ", target = "
        + json.dumps(rsyncd.url("ref"))
        + ", delay = 0 }\n"
    )
    note("(3) lsyncd: waiting for its start-up sync ...")
    t0 = time.monotonic()
    p = procs.start("lsyncd", [LSYNCD or "lsyncd", str(conf)], d / "lsyncd.out")
    try:

        def started() -> bool:
            if p.poll() is not None:
                raise BenchError(f"lsyncd exited {p.returncode}; see {d}")
            return log.exists() and "finished" in log.read_text(errors="replace")

        wait_for(started, 300, interval=0.1, what="lsyncd's start-up sync")
        startup = time.monotonic() - t0
        out = _propagate(tree.path, rsyncd.dst["ref"], rels, rng, 0.05)
        out["startup_s"] = startup
        note(f"(3) lsyncd: p50 {out.get('p50_ms', float('nan')):.1f} ms, p99 {out.get('p99_ms', float('nan')):.1f} ms")
        return out
    finally:
        procs.stop(p)


def bench_many(
    res: Results, pair: HasyncPair, rsyncd: RsyncDaemon, tree: TreeInfo, repeat: int, do_nochange: bool, do_memory: bool
) -> None:
    """(4) the standby agent's peak RSS while it syncs and holds the big tree; (2) no-change re-syncs."""
    assert pair.standby is None and pair.active is not None
    warm(tree.path)
    os.sync()
    peak_rss = 0

    def sample() -> None:
        nonlocal peak_rss
        if pair.standby is not None and pair.standby.poll() is None:
            peak_rss = max(peak_rss, proc_mem_kib(pair.standby.pid).get("VmRSS", 0))

    note(f"(4) standby agent: initial sync of {tree.files} files ...")
    t_initial = pair.start_standby(sample=sample)
    assert pair.standby is not None
    mem_after_initial = proc_mem_kib(pair.standby.pid)
    note(f"(4) standby agent in sync after {t_initial:.1f} s; VmHWM {mem_after_initial['VmHWM'] / 1024:.1f} MiB")
    verify_same(tree.path, pair.dst)
    time.sleep(2.0)  # holds the tree
    res.memory = {
        "tree_files": tree.files,
        "initial_sync_by_agent_s": t_initial,
        "after_initial": mem_after_initial,
        "sampled_peak_vmrss_kib": peak_rss,
    }

    if do_nochange:
        rsync_initial = timed(rsyncd.cmd(tree.path, "many"), rsyncd.servers())
        note(f"(2) rsync initial of {tree.files} files: {rsync_initial.wall_s:.2f} s")
        res.nochange["initial_rsync_s"] = rsync_initial.wall_s
        res.nochange["initial_hasync_agent_s"] = t_initial

    runs: dict[str, list[Run]] = {"hasync_agent": [], "hasync_no_agent": [], "rsync": []}
    count = repeat if do_nochange else 1
    # (b) the standby agent runs: `sync --once` asks it.
    for i in range(count + 1):
        r = timed(pair.sync_cmd(), pair.servers())
        if not r.stdout.startswith("in sync: 0 files"):
            raise BenchError(f"no-change sync transferred something: {r.stdout}")
        if i:
            runs["hasync_agent"].append(r)
        note(
            f"(2b) {'warm-up' if not i else f'run {i}/{count}'} hasync sync --once (agent running): "
            f"{r.wall_s:.3f} s (cpu {r.cpu_s:.2f} s)"
        )
    res.memory["after_sync_runs"] = proc_mem_kib(pair.standby.pid)
    hwm_mb = res.memory["after_sync_runs"]["VmHWM"] / 1024
    res.memory["peak_vmhwm_mib"] = hwm_mb
    if do_memory:
        res.targets.append(
            {
                "item": "(4) standby agent VmHWM MiB",
                "value": hwm_mb,
                "target": f"<= {TARGET_RSS_MB:g}",
                "met": hwm_mb <= TARGET_RSS_MB,
            }
        )
    pair.stop_standby()
    if not do_nochange:
        return
    # (a) no standby agent: the command scans the local tree itself; rsync runs interleaved.
    for i in range(repeat + 1):
        r = timed(pair.sync_cmd(), pair.servers())
        if not r.stdout.startswith("in sync: 0 files"):
            raise BenchError(f"no-change sync transferred something: {r.stdout}")
        q = timed(rsyncd.cmd(tree.path, "many"), rsyncd.servers())
        if i:
            runs["hasync_no_agent"].append(r)
            runs["rsync"].append(q)
        note(
            f"(2a) {'warm-up' if not i else f'run {i}/{repeat}'}: hasync sync --once (no agent) {r.wall_s:.3f} s "
            f"(cpu {r.cpu_s:.2f} s), rsync {q.wall_s:.3f} s (cpu {q.cpu_s:.2f} s)"
        )
    res.nochange.update({k: summary(v) for k, v in runs.items()})
    res.nochange["tree"] = {"files": tree.files, "bytes": tree.bytes}
    base = res.nochange["rsync"]["median_s"]
    for k, label in (("hasync_no_agent", "(2a) no-change, no agent"), ("hasync_agent", "(2b) no-change, agent")):
        ratio = res.nochange[k]["median_s"] / base
        res.nochange[f"ratio_{k}_rsync"] = ratio
        res.targets.append(
            {
                "item": f"{label}: hasync/rsync",
                "value": ratio,
                "target": f"<= {TARGET_NOCHANGE_RATIO}",
                "met": ratio <= TARGET_NOCHANGE_RATIO,
            }
        )


# -- report ----------------------------------------------------------------------------------------


def report(res: Results) -> str:
    lines: list[str] = []
    add = lines.append
    m = res.meta
    add(
        f"hasync replication benchmark  ({m['profile']}, seed {m['seed']}, {m['cpus']} CPUs, {m['rsync']}, "
        f"hasync {m['git']['commit'][:7]}{' + local changes' if m['git']['modified_src'] else ''})"
    )
    add(
        f"load average (1/5/15 min) at start {'/'.join(f'{x:.1f}' for x in m['loadavg_at_start'])}, "
        f"at end {'/'.join(f'{x:.1f}' for x in m['loadavg_at_end'])}: other processes on this machine add noise"
    )
    add("")
    row = "{:<44} {:>12} {:>12} {:>12}"
    if res.initial:
        i = res.initial
        t = i["tree"]
        add(
            f"(1) initial full sync, {t['files']} files, {t['bytes'] / MIB:.0f} MiB, median of {i['repeat']} "
            "(wall s / cpu s of all processes), "
            + ("each run into a fresh ext4" if i.get("fresh_fs") else "destinations reset in place")
        )
        add(row.format("", "hasync", "rsync", "rsync --fsync"))
        add(
            row.format(
                "wall s",
                f"{i['hasync']['median_s']:.2f}",
                f"{i['rsync']['median_s']:.2f}",
                f"{i['rsync_fsync']['median_s']:.2f}",
            )
        )
        add(
            row.format(
                "wall s, best run",
                f"{i['hasync']['min_s']:.2f}",
                f"{i['rsync']['min_s']:.2f}",
                f"{i['rsync_fsync']['min_s']:.2f}",
            )
        )
        add(
            row.format(
                "cpu s",
                f"{i['hasync']['cpu_median_s']:.2f}",
                f"{i['rsync']['cpu_median_s']:.2f}",
                f"{i['rsync_fsync']['cpu_median_s']:.2f}",
            )
        )
        add(
            row.format(
                "MiB/s", *(f"{t['bytes'] / MIB / i[k]['median_s']:.0f}" for k in ("hasync", "rsync", "rsync_fsync"))
            )
        )
        add(
            f"    ratio hasync/rsync = {i['ratio_hasync_rsync']:.2f} (best runs: "
            f"{i['hasync']['min_s'] / i['rsync']['min_s']:.2f})   hasync/rsync --fsync = "
            f"{i['ratio_hasync_rsync_fsync']:.2f}"
        )
        add("")
    n = res.nochange
    if "rsync" in n:
        t = n["tree"]
        add(f"(2) no-change re-sync, {t['files']} files, median of {len(n['rsync']['runs_s'])} (whole process)")
        add(row.format("", "median s", "min s", "cpu s"))
        for k, label in (
            ("hasync_no_agent", "hasync sync --once, no standby agent"),
            ("hasync_agent", "hasync sync --once, standby agent runs"),
            ("rsync", "rsync -a --delete"),
        ):
            add(row.format(label, f"{n[k]['median_s']:.3f}", f"{n[k]['min_s']:.3f}", f"{n[k]['cpu_median_s']:.2f}"))
        add(
            f"    ratio (a) no agent / rsync = {n['ratio_hasync_no_agent_rsync']:.2f}   "
            f"(b) agent / rsync = {n['ratio_hasync_agent_rsync']:.2f}"
        )
        add(
            f"    (initial sync of this tree: hasync standby agent {n['initial_hasync_agent_s']:.1f} s until in sync, "
            f"rsync {n['initial_rsync_s']:.1f} s)"
        )
        add("")
    p = res.propagation
    if p:
        add(
            f"(3) one-file change propagation, {p['hasync']['changes']} changes (ms from the write until the "
            "standby's copy reads the new content)"
        )
        add(row.format("", "p50 ms", "p99 ms", "max ms"))
        for k in ("hasync", "lsyncd"):
            v = p.get(k, {})
            if "p50_ms" in v:
                lost = f"   ({v['not_seen_within_10s']} not seen within 10 s)" if v["not_seen_within_10s"] else ""
                add(
                    row.format(
                        k + (" (delay=0, to rsyncd)" if k == "lsyncd" else " (both agents)"),
                        f"{v['p50_ms']:.1f}",
                        f"{v['p99_ms']:.1f}",
                        f"{v['max_ms']:.1f}",
                    )
                    + lost
                )
            elif v:
                add(f"{k}: skipped ({v.get('skipped', 'no result')})")
        add("")
    mem = res.memory
    if mem:
        add(
            f"(4) standby agent memory, {mem['tree_files']} files (initial sync by the agent: "
            f"{mem['initial_sync_by_agent_s']:.1f} s)"
        )
        add(
            f"    VmHWM after the initial sync {mem['after_initial']['VmHWM'] / 1024:.1f} MiB, "
            f"after the sync --once runs {mem['after_sync_runs']['VmHWM'] / 1024:.1f} MiB; "
            f"VmRSS now {mem['after_sync_runs']['VmRSS'] / 1024:.1f} MiB"
        )
        add("")
    if m.get("active_scan_s"):
        add(
            "active agent start-up (scan + hash until /v1/info has the root): "
            + ", ".join(f"{k} {v:.1f} s" for k, v in m["active_scan_s"].items())
        )
        add("")
    add("targets")
    for t in res.targets:
        add(f"    {t['item']:<40} {t['value']:>9.2f}   {t['target']:<10} {'MET' if t['met'] else 'MISSED'}")
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/hasync-bench"),
        help="work dir; generated trees under WORK/trees are reused (default %(default)s)",
    )
    ap.add_argument("--seed", type=int, default=45641)
    ap.add_argument("--quick", action="store_true", help="small trees and fewer repeats: a smoke test")
    ap.add_argument("--only", default="1,2,3,4", help="comma-separated items to run (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=None, help="no-change runs per variant (default 5, quick 3)")
    ap.add_argument("--repeat-initial", type=int, default=None, help="initial-sync runs per tool (default 5, quick 1)")
    ap.add_argument("--changes", type=int, default=None, help="changes for item 3 (default 100, quick 30)")
    ap.add_argument("--no-lsyncd", action="store_true", help="skip the lsyncd comparison in item 3")
    ap.add_argument(
        "--no-fresh-fs",
        action="store_true",
        help="item 1: reset the destinations in place instead of on a fresh ext4 per run",
    )
    ap.add_argument("--keep", action="store_true", help="keep WORK/run (destinations, configs, logs) afterwards")
    ap.add_argument("--out", type=Path, default=OUT_JSON, help="JSON results (default %(default)s)")
    args = ap.parse_args(argv)
    try:
        args.only = {int(x) for x in args.only.split(",") if x.strip()}
    except ValueError:
        ap.error("--only takes numbers 1-4, comma-separated")
    if not args.only or not args.only <= {1, 2, 3, 4}:
        ap.error("--only takes numbers 1-4, comma-separated")
    args.repeat = args.repeat or (3 if args.quick else 5)
    args.repeat_initial = args.repeat_initial or (1 if args.quick else 5)
    args.changes = args.changes or (30 if args.quick else 100)
    return args


def _git_state() -> dict[str, Any]:
    def git(*a: str) -> str:
        cp = subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True)
        return cp.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "modified_src": git("status", "--short", "src").splitlines()}


def run(args: argparse.Namespace, procs: Procs) -> Results:
    work: Path = args.work.resolve()
    run_dir = work / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    profile = "quick" if args.quick else "full"
    res = Results(
        meta={
            "profile": profile,
            "seed": args.seed,
            "only": sorted(args.only),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "rsync": subprocess.run([RSYNC, "--version"], capture_output=True, text=True)
            .stdout.splitlines()[0]
            .strip(),
            "work": str(work),
            "active_scan_s": {},
            "git": _git_state(),
            "loadavg_at_start": os.getloadavg(),
        }
    )
    rsyncd = RsyncDaemon(run_dir, ["ref", "ref_fsync", "many"], procs)
    if args.only & {1, 3}:
        tree = ensure_tree(
            work / "trees", f"ref-{profile}-s{args.seed}", REF_QUICK if args.quick else REF_FULL, args.seed
        )
        res.meta["ref_tree"] = {"files": tree.files, "bytes": tree.bytes}
        pair = HasyncPair(run_dir / "pair-ref", tree.path, procs)
        warm(tree.path)
        res.meta["active_scan_s"]["ref"] = pair.start_active()
        note(f"active agent ready on the reference tree after {res.meta['active_scan_s']['ref']:.1f} s")
        if 1 in args.only:
            fresh = FreshFs(run_dir / "fresh-fs.img", wanted=not args.no_fresh_fs)
            try:
                bench_initial(res, pair, rsyncd, tree, args.repeat_initial, fresh)
            finally:
                fresh.release()
        else:  # item 3 alone: bring both destinations in sync first (not measured)
            pair.reset_standby()
            timed(pair.sync_cmd())
            timed(rsyncd.cmd(tree.path, "ref"))
        if 3 in args.only:
            bench_propagation(res, pair, rsyncd, tree, args.changes, args.seed, run_dir, procs, not args.no_lsyncd)
        pair.stop()
    if args.only & {2, 4}:
        tree = ensure_tree(
            work / "trees", f"many-{profile}-s{args.seed}", MANY_QUICK if args.quick else MANY_FULL, args.seed + 1
        )
        res.meta["many_tree"] = {"files": tree.files, "bytes": tree.bytes}
        pair = HasyncPair(run_dir / "pair-many", tree.path, procs)
        # Files modified less than 2 s ago are re-hashed on every scan (racy-clean rule): let them settle.
        newest = max(os.stat(tree.path / "many" / d).st_mtime for d in os.listdir(tree.path / "many"))
        time.sleep(max(0.0, newest + 2.5 - time.time()))
        res.meta["active_scan_s"]["many"] = pair.start_active()
        note(f"active agent ready on the {tree.files}-file tree after {res.meta['active_scan_s']['many']:.1f} s")
        bench_many(res, pair, rsyncd, tree, args.repeat, 2 in args.only, 4 in args.only)
        pair.stop()
    return res


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    procs = Procs()

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        res = run(args, procs)
    except KeyboardInterrupt:
        note("interrupted: stopping the processes started by the bench")
        return 130
    except (BenchError, AssertionError) as exc:  # AssertionError: a wait of pairlib's timed out
        note(f"FAILED: {exc or type(exc).__name__}")
        return 1
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(args.work.resolve() / "run", ignore_errors=True)
    res.meta["total_s"] = time.monotonic() - T_START
    res.meta["loadavg_at_end"] = os.getloadavg()
    text = report(res)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(asdict(res) | {"table": text.splitlines()}, indent=2, default=str) + "\n")
    note(f"results written to {args.out}; total {res.meta['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
