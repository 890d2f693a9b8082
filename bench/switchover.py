"""Time from `hasync switchover` to the new active serving, on an in-sync pair of 10,000 files (issue 13).

Target: <= 2 s on this machine. The pair (tests/pairlib.py, through `replication.HasyncPair`) holds one sync
dir of 10,000 small files (0.5-8 KiB) a few directories deep (`etc/app/conf/dNNNN/...` and
`var/lib/app/udf/dNNNN/...`), a copy of a seeded tree kept under `--work` (the agents may write to it once
the roles swap). Once the standby is in sync, `--runs` switchovers alternate the direction (a -> b, b -> a,
...). Each one: `hasync switchover --json` is started as a whole process on the node that becomes active
(`--on active`: on the one that stops being active, which forwards it), and from the process's start the
bench polls the new active every ~5 ms (`GET /v1/info` with the token, as AgentClient asks):

- serving: the new active answers `role: active` with its Merkle roots, equal to the pair's roots before
  the switch (what the new standby holds). This is the figure the target is about;
- exit: the `switchover` process has exited 0 (its report read: `duration_s` and each step's time from
  the `at` stamps, milliseconds). `cli` = exit - `duration_s`: the command's own start (Python, imports,
  config), its request and its exit;
- standby ready (polled every ~20 ms): the new standby answers `role: standby` with the same roots (it has
  rescanned its copy);
- in sync (every ~20 ms): the new standby's brief status says `in_sync` (it has reconciled with the new active).

Before each run the pair is settled: both agents answer `GET /v1/failover` 200 (a switchover now loses
nothing). What that verdict costs per call is `failover_cost.py`'s figure. `--profile` runs `py-spy record`
on both agents during each switchover and prints the functions that used the most CPU (py-spy on PATH or
`--py-spy`). Results: a table, and `bench/out/switchover.json`.

Run:  .venv/bin/python bench/switchover.py [--runs N] [--on standby|active] [--profile] [--work DIR]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.* (a sibling bench script)

from bench.replication import KIB, PY, REPO, BenchError, Group, HasyncPair, Procs, ensure_tree, note, warm

TARGET_S = 2.0
POLL_S = 0.005
OTHER_EVERY = 4  # the new standby is asked every 4th poll (~20 ms)
OUT_JSON = REPO / "bench" / "out" / "switchover.json"
TREE = (  # 10,000 files, 4-5 directories deep
    Group("etc/app/conf", 40, 4_000, 512, 8 * KIB),
    Group("var/lib/app/udf", 60, 6_000, 512, 8 * KIB),
)
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Node:
    """One agent of the pair, by its letter."""

    def __init__(self, pair: HasyncPair, letter: str) -> None:
        self.letter = letter
        self.agent = pair.env.a if letter == "a" else pair.env.b
        self.port = self.agent.port
        self.config = self.agent.config
        self.token = pair.token

    @property
    def pid(self) -> int:
        assert self.agent.proc is not None
        return self.agent.proc.pid

    def get(self, path: str) -> Any:
        """`GET path` with the token: its decoded body, or None when the agent does not answer 200."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with _OPENER.open(req, timeout=5) as r:
                body = r.read()
                ctype = r.headers.get("Content-Type", "")
        except (OSError, urllib.error.URLError):
            return None
        if "msgpack" in ctype:
            return msgpack.unpackb(body, raw=False)
        return json.loads(body)

    def info(self) -> dict[str, Any] | None:
        doc = self.get("/v1/info")
        return doc if isinstance(doc, dict) else None

    def failover_safe(self) -> bool:
        try:
            with _OPENER.open(f"http://127.0.0.1:{self.port}/v1/failover", timeout=5) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError):
            return False


def settle(old: Node, new: Node, timeout: float = 120) -> dict[str, Any]:
    """Wait until `old` is the active, `new` the standby, in sync, both saying a switchover is safe; the roots."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        a, b = old.info(), new.info()
        status = new.get("/v1/status?brief=1")
        if (
            a is not None
            and b is not None
            and a.get("role") == "active"
            and b.get("role") == "standby"
            and a.get("roots") == b.get("roots")
            and isinstance(status, dict)
            and status.get("in_sync")
            and old.failover_safe()
            and new.failover_safe()
        ):
            return dict(a["roots"])
        time.sleep(0.1)
    raise BenchError(f"the pair did not settle with node-{old.letter} active within {timeout:g} s")


def step_times(rep: dict[str, Any]) -> dict[str, float]:
    """Seconds each step of the report took: from the previous step's `at` (the first from `start`)."""
    out: dict[str, float] = {}
    prev: datetime | None = None
    for s in rep.get("steps", []):
        at = datetime.fromisoformat(s["at"])
        name = s["step"]
        out[name] = round(out.get(name, 0.0) + (0.0 if prev is None else (at - prev).total_seconds()), 3)
        prev = at
    return out


class Profiler:
    """`py-spy record` of both agents during one switchover: raw collapsed stacks, one file per agent."""

    def __init__(self, exe: str, out_dir: Path) -> None:
        self.exe, self.out_dir = exe, out_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        out_dir.mkdir(parents=True, exist_ok=True)

    def start(self, run: int, nodes: list[Node]) -> None:
        for n in nodes:
            out = self.out_dir / f"run{run}-node-{n.letter}.txt"
            cmd = [
                self.exe,
                "record",
                "--pid",
                str(n.pid),
                "--rate",
                "1000",
                "--nonblocking",
                "--format",
                "raw",
                "-o",
                str(out),
            ]
            self.procs.append(subprocess.Popen([*cmd, "--threads"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        time.sleep(1.0)  # py-spy attaches

    def wrap(self, run: int, cmd: list[str]) -> list[str]:
        """`cmd` run under py-spy: the command's own profile."""
        out = self.out_dir / f"run{run}-cli.txt"
        return [self.exe, "record", "--rate", "1000", "--nonblocking", "--format", "raw", "-o", str(out), "--", *cmd]

    def stop(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()


IDLE_LEAVES = ("_worker (concurrent/futures/thread.py:81)", "EpollSelector.select", "Condition.wait", "Event.wait")


def _frame(f: str) -> str:
    """`func (hasync/x.py:12)` -> `func (hasync/x.py)`: one name per function, whatever the line."""
    m = re.fullmatch(r"(.*) \((.*?)(?::\d+)?\)", f)
    return f if m is None else f"{m[1]} ({m[2]})"


def profile_top(
    path: Path, n: int = 12, hasync_only: bool = True
) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """From py-spy's raw collapsed stacks, idle samples left out (a worker thread waiting for work, the
    event loop in epoll): the samples, the `n` functions with the most own samples, and the `n` hasync
    functions (any, unless `hasync_only`) with the most inclusive samples (at 1000 Hz, a sample is ~1 ms)."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit() or stack.rsplit(";", 1)[-1].startswith(IDLE_LEAVES):
            continue
        frames = [_frame(f) for f in stack.split(";")]
        total += int(count)
        own[frames[-1]] += int(count)
        for f in set(frames):
            if not hasync_only or ("hasync/" in f and "hasync/cli/" not in f and "hasync/__main__" not in f):
                incl[f] += int(count)
    top = [(f, c) for f, c in incl.most_common() if c < 0.95 * total]  # not the frames of every sample
    return total, own.most_common(n), top[:n]


def one_switchover(
    run: int, old: Node, new: Node, on: str, roots: dict[str, Any], timeout: float, profiler: Profiler | None
) -> dict[str, Any]:
    """Run `hasync switchover --json` and time the new active's serving, the exit, the standby and the sync."""
    runner = new if on == "standby" else old
    cmd = [PY, "-m", "hasync", "switchover", "--json", "-c", str(runner.config)]
    if profiler is not None:
        cmd = profiler.wrap(run, cmd)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=runner.config.parent)
    marks: dict[str, float] = {}
    deadline = t0 + timeout
    polls = 0
    while len(marks) < 4:
        now = time.perf_counter() - t0
        polls += 1
        if "exit" not in marks and proc.poll() is not None:
            marks["exit"] = now
        if "serving" not in marks:
            i = new.info()
            if i is not None and i.get("role") == "active" and i.get("roots") == roots:
                marks["serving"] = time.perf_counter() - t0
        if polls % OTHER_EVERY:  # the new standby less often: each request costs its agent CPU
            pass
        elif "standby ready" not in marks:
            i = old.info()
            if i is not None and i.get("role") == "standby" and i.get("roots") == roots:
                marks["standby ready"] = time.perf_counter() - t0
        elif "serving" in marks and "in sync" not in marks:
            s = old.get("/v1/status?brief=1")
            if isinstance(s, dict) and s.get("in_sync"):
                marks["in sync"] = time.perf_counter() - t0
        if time.perf_counter() > deadline:
            proc.kill()
            raise BenchError(f"run {run}: not done within {timeout:g} s (reached: {marks})")
        time.sleep(POLL_S)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise BenchError(f"run {run}: hasync switchover exited {proc.returncode}:\n{out.decode()}{err.decode()}")
    text = out.decode()
    rep = json.JSONDecoder().raw_decode(text, text.find("{"))[0]  # (py-spy, profiling, writes lines around it)
    return {
        "run": run,
        "from": f"node-{old.letter}",
        "to": f"node-{new.letter}",
        "run_on": f"node-{runner.letter}",
        **{f"{k.replace(' ', '_')}_s": round(v, 4) for k, v in marks.items()},
        "duration_s": rep["duration_s"],
        "epoch": rep["epoch"],
        "steps_s": step_times(rep),
        "report": rep,
    }


def report(runs: list[dict[str, Any]], files: int) -> str:
    steps: list[str] = []
    for r in runs:
        steps += [s for s in r["steps_s"] if s not in steps]
    head = (
        f"{'run':<4}{'direction':<18}{'serving s':>10}{'exit s':>8}{'report s':>10}{'cli s':>7}{'stdby s':>9}"
        f"{'sync s':>8}"
    )
    lines = [f"hasync switchover: {files} files in sync, {len(runs)} runs (times from the process's start)", ""]
    lines.append(head + "".join(f"{s[:11]:>12}" for s in steps))
    for r in runs:
        row = (
            f"{r['run']:<4}{r['from'] + ' -> ' + r['to']:<18}{r['serving_s']:>10.3f}{r['exit_s']:>8.3f}"
            f"{r['duration_s']:>10.3f}{r['exit_s'] - r['duration_s']:>7.3f}{r['standby_ready_s']:>9.3f}"
            f"{r['in_sync_s']:>8.3f}"
        )
        lines.append(row + "".join(f"{r['steps_s'].get(s, float('nan')):>12.3f}" for s in steps))
    for label, key in (
        ("serving", "serving_s"),
        ("exit", "exit_s"),
        ("report", "duration_s"),
        ("standby ready", "standby_ready_s"),
        ("in sync", "in_sync_s"),
    ):
        vals = [r[key] for r in runs]
        lines.append(f"{label:<14} p50 {statistics.median(vals):7.3f} s   max {max(vals):7.3f} s")
    worst = max(r["serving_s"] for r in runs)
    p50 = statistics.median(r["serving_s"] for r in runs)
    verdict = "MET" if worst <= TARGET_S else "MISSED"
    lines.append(
        f"target: serving <= {TARGET_S:g} s: {verdict} (p50 {p50:.3f} s = {p50 / TARGET_S:.2f} x target, "
        f"max {worst:.3f} s = {worst / TARGET_S:.2f} x)"
    )
    lines.append(
        "(step times: from the previous step's `at`, ms stamps; the failover verdict's cost: failover_cost.py)"
    )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="switchovers, alternating direction (default 5)")
    ap.add_argument("--on", choices=("standby", "active"), default="standby", help="the node that runs the command")
    ap.add_argument("--work", type=Path, default=Path("/tmp/hasync-bench"))
    ap.add_argument("--seed", type=int, default=45641)
    ap.add_argument("--timeout", type=float, default=120.0, help="per run, seconds")
    ap.add_argument("--profile", action="store_true", help="py-spy record both agents during each switchover")
    ap.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy", help="the py-spy program")
    ap.add_argument("--keep", action="store_true", help="keep the pair's directory under --work")
    ap.add_argument("--out", type=Path, default=OUT_JSON)
    args = ap.parse_args()
    tree = ensure_tree(args.work / "trees", f"switch-s{args.seed}", TREE, args.seed)
    procs = Procs()
    base = Path(tempfile.mkdtemp(prefix="switchover-", dir=args.work))
    base.chmod(0o755)
    profiler = Profiler(args.py_spy, args.out.parent / "switchover-profile") if args.profile else None
    try:
        data = base / "tree"
        shutil.copytree(tree.path, data)  # the agents write here once node-a is a standby
        warm(data)
        pair = HasyncPair(base, data, procs)
        scanned = pair.start_active()
        synced = pair.start_standby()
        note(f"active scanned in {scanned:.1f} s, standby synced in {synced:.1f} s")
        nodes = [Node(pair, "a"), Node(pair, "b")]
        runs: list[dict[str, Any]] = []
        for i in range(1, args.runs + 1):
            old, new = nodes if i % 2 else nodes[::-1]
            roots = settle(old, new)
            time.sleep(1.0)  # the periodic work after settling (cache saves, checks) is not in the figure
            if profiler is not None:
                profiler.start(i, nodes)
            try:
                r = one_switchover(i, old, new, args.on, roots, args.timeout, profiler)
            finally:
                if profiler is not None:
                    profiler.stop()
            r["load_avg"] = os.getloadavg()
            runs.append(r)
            note(f"run {i}: {r['from']} -> {r['to']} serving after {r['serving_s']:.3f} s")
        print(report(runs, tree.files))
        if profiler is not None:
            for i in (1, 2):
                for n in nodes:
                    role = "new active" if (n.letter == "b") == (i % 2 == 1) else "old active"
                    total, own, incl = profile_top(profiler.out_dir / f"run{i}-node-{n.letter}.txt")
                    print(f"\nprofile, run {i}, node-{n.letter} ({role}): {total} busy samples (~ms)")
                    print("  own:       " + "\n             ".join(f"{c:>5}  {f}" for f, c in own))
                    print("  inclusive: " + "\n             ".join(f"{c:>5}  {f}" for f, c in incl))
            total, own, incl = profile_top(profiler.out_dir / "run1-cli.txt", hasync_only=False)
            print(f"\nprofile, run 1, the switchover command: {total} busy samples (~ms)")
            print("  own:       " + "\n             ".join(f"{c:>5}  {f}" for f, c in own))
            print("  inclusive: " + "\n             ".join(f"{c:>5}  {f}" for f, c in incl))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "files": tree.files,
            "bytes": tree.bytes,
            "target_s": TARGET_S,
            "run_on": args.on,
            "commit": subprocess.run(
                ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO
            ).stdout.strip(),
            "runs": runs,
            "serving_p50_s": statistics.median(r["serving_s"] for r in runs),
            "serving_max_s": max(r["serving_s"] for r in runs),
            "target_met": max(r["serving_s"] for r in runs) <= TARGET_S,
        }
        args.out.write_text(json.dumps(doc, indent=1))
        return 0
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
