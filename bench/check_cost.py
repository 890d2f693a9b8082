"""CPU cost of one sync check of a 100,000-file pair that is in sync (issue 3 target: < 50 ms per node).

Both agents run on the generated tree of `replication.py` (1000 folders x 100 files, reused
from `--work`). Once the standby is in sync, `POST /v1/check` is sent N times to each node,
and the CPU time (utime + stime from /proc) that each agent spent is divided by N: the node
checked and its peer (the check asks the peer one question). The agent's own measure of its
last check (`hasync_check_cpu_seconds`, process time around the check) is printed beside it.

Run:  .venv/bin/python bench/check_cost.py [--quick] [--checks N] [--work DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.* (a sibling bench script)

from bench.replication import (
    MANY_FULL,
    MANY_QUICK,
    HasyncPair,
    Procs,
    ensure_tree,
    proc_cpu_s,
)

TARGET_MS = 50.0


def post(port: int, token: str, path: str) -> bytes:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=b"", method="POST", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return bytes(r.read())


def gauge(port: int, token: str, name: str) -> float:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise KeyError(name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10,000 files instead of 100,000")
    ap.add_argument("--checks", type=int, default=30, help="checks per node (default 30)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/hasync-bench"))
    ap.add_argument("--seed", type=int, default=45641)
    args = ap.parse_args()
    tree = ensure_tree(
        args.work / "trees", "many-quick" if args.quick else "many", MANY_QUICK if args.quick else MANY_FULL, args.seed
    )
    procs = Procs()
    base = Path(tempfile.mkdtemp(prefix="check-cost-", dir=args.work))
    try:
        pair = HasyncPair(base, tree.path, procs)
        pair.start_active()
        synced = pair.start_standby()
        time.sleep(2)  # let the post-sync events settle
        assert pair.active is not None and pair.standby is not None
        pids = {"node-a (active)": pair.active.pid, "node-b (standby)": pair.standby.pid}
        ports = {"node-a (active)": pair.port_a, "node-b (standby)": pair.port_b}
        print(
            f"hasync check cost: {tree.files} files in sync (standby synced in {synced:.1f} s), "
            f"{args.checks} checks per node"
        )
        print(
            f"{'checked node':<20}{'its CPU ms/check':>18}{'peer CPU ms/check':>19}{'agent gauge ms':>16}"
            f"{'wall ms (median)':>18}"
        )
        worst = 0.0
        for node, port in ports.items():
            peer = next(n for n in pids if n != node)
            idle_a, idle_b = proc_cpu_s(pids[node]), proc_cpu_s(pids[peer])
            time.sleep(2.0)  # idle CPU over the same time, subtracted below
            idle_rate_me = (proc_cpu_s(pids[node]) - idle_a) / 2.0
            idle_rate_peer = (proc_cpu_s(pids[peer]) - idle_b) / 2.0
            c0, p0, t0 = proc_cpu_s(pids[node]), proc_cpu_s(pids[peer]), time.monotonic()
            walls, gauges = [], []
            for _ in range(args.checks):
                w0 = time.monotonic()
                post(port, pair.token, "/v1/check")
                walls.append(time.monotonic() - w0)
                gauges.append(gauge(port, pair.token, "hasync_check_cpu_seconds"))
            dt = time.monotonic() - t0
            mine = max(0.0, proc_cpu_s(pids[node]) - c0 - idle_rate_me * dt) / args.checks * 1000
            theirs = max(0.0, proc_cpu_s(pids[peer]) - p0 - idle_rate_peer * dt) / args.checks * 1000
            worst = max(worst, mine, theirs)
            print(
                f"{node:<20}{mine:>18.2f}{theirs:>19.2f}{statistics.median(gauges) * 1000:>16.2f}"
                f"{statistics.median(walls) * 1000:>18.2f}"
            )
        print(
            f"(CPU includes the HTTP request and the /metrics scrape of each round; clock tick "
            f"{1000 / 100:.0f} ms, so figures below a few ms are averages of ticks)"
        )
        print(
            f"target: < {TARGET_MS:.0f} ms CPU per check per node: {'MET' if worst < TARGET_MS else 'MISSED'} "
            f"(worst {worst:.2f} ms)"
        )
        return 0
    finally:
        procs.stop_all()


if __name__ == "__main__":
    raise SystemExit(main())
