"""The agent under hostile clients (docs/security.md): figures, not pass/fail.

1. Slow clients: ``--conns`` connections (default 1,000) that send an incomplete request head and
   then a byte a second, reopened as the agent closes them, for ``--seconds`` against the active
   agent of a pair, whose open-file limit is set to 1,024 (prlimit). Sampled every 0.5 s: the
   agent's RSS and open descriptors and the latency of ``GET /healthz`` on a new connection; a file
   written on the active every 2 s and the delay until it is on the standby.
2. Log flood: requests with a 4 KB path and a wrong token, as fast as one client sends them over a
   kept-alive connection, for ``--seconds``: HA log bytes written per minute.

Run:  .venv/bin/python bench/hostile_clients.py [--conns 1000] [--seconds 60]
"""

from __future__ import annotations

import argparse
import http.client
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from pairlib import cleanup_base, make_base, new_pair, wait_for
from test_limits import SlowClients, healthz_latency, open_fds, rss_kib


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


def slow_clients(conns: int, seconds: float) -> None:
    base = make_base()
    env = new_pair(base)
    try:
        env.a.start()
        env.b.start()
        env.wait_in_sync()
        assert env.a.proc is not None
        pid = env.a.proc.pid
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (1024, 1024))
        rss0 = rss_kib(pid)
        lat0 = [healthz_latency(env.pair.port_a) for _ in range(20)]
        rss, lat, fds, delays = [], [], [], []
        with SlowClients(env.pair.port_a, conns) as attack:
            t0 = time.monotonic()
            i = 0
            while time.monotonic() - t0 < seconds:
                for _ in range(4):
                    lat.append(healthz_latency(env.pair.port_a))
                    rss.append(rss_kib(pid))
                    fds.append(open_fds(pid))
                    time.sleep(0.5)
                name = env.src / "conf" / f"bench-{i}.txt"
                name.write_text(f"written under attack {i}")
                w = time.monotonic()
                wait_for((env.dst / "conf" / name.name).exists, 60, interval=0.005, what="replication")
                delays.append(time.monotonic() - w)
                i += 1
            opened = attack.opened
        print(f"slow clients: {conns} held open for {seconds:.0f} s ({opened} connections opened in all)")
        print(f"  agent RSS: before {rss0 / 1024:.0f} MiB, during max {max(rss) / 1024:.0f} MiB")
        print(f"  agent open descriptors during: max {max(fds)} (limit 1024)")
        print(
            f"  /healthz latency before: median {statistics.median(lat0) * 1000:.1f} ms; during: median "
            f"{statistics.median(lat) * 1000:.1f} ms, p99 {pct(lat, 0.99) * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms"
            f" ({len(lat)} probes)"
        )
        print(
            f"  replication delay during: median {statistics.median(delays) * 1000:.0f} ms, "
            f"max {max(delays) * 1000:.0f} ms ({len(delays)} files)"
        )
        print(f"  agent stdout+stderr: {env.a.log.stat().st_size} bytes in all")
    finally:
        env.stop()
        cleanup_base(base)


def log_flood(seconds: float) -> None:
    base = make_base()
    env = new_pair(base)
    try:
        env.a.start()
        ha = base / "logs" / "node-a" / "ha.log"
        size0 = ha.stat().st_size
        conn = http.client.HTTPConnection("127.0.0.1", env.pair.port_a, timeout=10)
        path = "/v1/status/" + "A" * 4096
        n, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < seconds:
            conn.request("GET", path, headers={"Authorization": "Bearer wrong"})
            conn.getresponse().read()
            n += 1
        elapsed = time.monotonic() - t0
        time.sleep(1)
        written = ha.stat().st_size - size0
        print(
            f"log flood: {n} unauthenticated requests in {elapsed:.0f} s ({n / elapsed:.0f}/s): "
            f"{written} bytes of HA log, {written / elapsed * 60:.0f} bytes/min"
        )
    finally:
        env.stop()
        cleanup_base(base)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    slow_clients(args.conns, args.seconds)
    log_flood(args.seconds)


if __name__ == "__main__":
    main()
