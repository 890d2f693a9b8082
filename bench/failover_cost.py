"""Cost of one failover verdict (`GET /v1/failover`) on a 100,000-file pair in sync (issue 13).

Both agents run on the generated tree of `replication.py` (1000 folders x 100 files, reused from
`--work`). Once the standby is in sync, `GET /v1/failover` is sent N times in a row to each node
(no token, as an HTTP health checker does): the wall time of each call, and the CPU time (utime +
stime from /proc, idle rate subtracted) the node and its peer spent per call. The standby decides
from memory; the active reuses the standby's answer for a second (`ActiveRole.failover`), so a
last pass asks the active once every 1.1 s: each of those calls costs a brief status of the standby.

Run:  .venv/bin/python bench/failover_cost.py [--quick] [--calls N] [--spaced N] [--work DIR]
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

from bench.replication import MANY_FULL, MANY_QUICK, HasyncPair, Procs, ensure_tree, proc_cpu_s

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def probe(port: int) -> float:
    """One `GET /v1/failover`; its wall time in seconds (it must answer 200: the pair is in sync)."""
    t0 = time.perf_counter()
    with _OPENER.open(f"http://127.0.0.1:{port}/v1/failover", timeout=30) as r:
        body = r.read()
        assert r.status == 200 and body == b"safe\n", (r.status, body)
    return time.perf_counter() - t0


def idle_rate(pid: int, seconds: float = 2.0) -> float:
    c0 = proc_cpu_s(pid)
    time.sleep(seconds)
    return (proc_cpu_s(pid) - c0) / seconds


def run(label: str, port: int, me: int, peer: int, calls: int, gap_s: float) -> None:
    rate_me, rate_peer = idle_rate(me), idle_rate(peer)
    c0, p0, t0 = proc_cpu_s(me), proc_cpu_s(peer), time.monotonic()
    walls = []
    busy = 0.0
    for _ in range(calls):
        walls.append(probe(port))
        busy += walls[-1]
        if gap_s:
            time.sleep(gap_s)
    dt = time.monotonic() - t0
    mine = max(0.0, proc_cpu_s(me) - c0 - rate_me * dt) / calls * 1e6
    theirs = max(0.0, proc_cpu_s(peer) - p0 - rate_peer * dt) / calls * 1e6
    walls.sort()
    p99 = walls[min(len(walls) - 1, int(len(walls) * 0.99))]
    print(f"{label:<34}{calls:>7}{statistics.median(walls) * 1e6:>14.0f}{p99 * 1e6:>12.0f}{mine:>16.0f}{theirs:>16.0f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10,000 files instead of 100,000")
    ap.add_argument("--calls", type=int, default=2000, help="calls in a row per node (default 2000)")
    ap.add_argument("--spaced", type=int, default=10, help="calls to the active 1.1 s apart (default 10)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/hasync-bench"))
    ap.add_argument("--seed", type=int, default=45641)
    args = ap.parse_args()
    tree = ensure_tree(
        args.work / "trees", "many-quick" if args.quick else "many", MANY_QUICK if args.quick else MANY_FULL, args.seed
    )
    procs = Procs()
    base = Path(tempfile.mkdtemp(prefix="failover-cost-", dir=args.work))
    try:
        pair = HasyncPair(base, tree.path, procs)
        pair.start_active()
        synced = pair.start_standby()
        assert pair.active is not None and pair.standby is not None
        a, b = pair.active.pid, pair.standby.pid
        deadline = time.monotonic() + 60
        while True:  # the verdict follows the standby's state: safe once it has settled after the sync
            try:
                probe(pair.port_b)
                probe(pair.port_a)
                break
            except (OSError, AssertionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        print(f"failover verdict cost: {tree.files} files in sync (standby synced in {synced:.1f} s)")
        print(f"{'asked':<34}{'calls':>7}{'wall us p50':>14}{'wall p99':>12}{'its CPU us':>16}{'peer CPU us':>16}")
        run("node-b (standby), in a row", pair.port_b, b, a, args.calls, 0.0)
        run("node-a (active), in a row", pair.port_a, a, b, args.calls, 0.0)
        if args.spaced:
            run("node-a (active), 1.1 s apart", pair.port_a, a, b, args.spaced, 1.1)
        print(
            "(wall: the whole HTTP request from this process, a new connection each time; CPU per call from "
            "/proc, idle rate subtracted, clock tick 10 ms: an average over the calls)"
        )
        return 0
    finally:
        procs.stop_all()


if __name__ == "__main__":
    raise SystemExit(main())
