"""Memory of `hasync collect` over a 1 GB rotated HA log set: the collector's peak RSS must stay under 100 MB.

What is measured:

1. A rotated log set is generated once (reused by later runs): ``--gb`` GB of HA run log
   lines in the SPEC §8 format (uncompressed size; about 120 bytes a line, a traceback every
   1000 entries), rotated every 20 MB as halog does, each rotated file gzip'ed and named
   ``ha.log.YYYY-MM-DD_HH-MM-SS.gz`` after its rotation time, plus a current ``ha.log``.
2. Both nodes of a pair (``hasync.demo.write_pair``) have that set as their HA log
   (node-a's log dir is a symlink to node-b's). node-a's agent runs; node-b's does not.
3. ``hasync collect`` runs on node-b as a child process, twice:
   - ``wide``: a window over the middle 40 % of the set (about 400 MB of log lines per node,
     cut from the middle of the rotated files, streamed from the peer), so the size guard
     (default 200 MB) drops the oldest lines;
   - ``alarm``: the default 10 minutes before and after an instant in the middle.
   Peak RSS of the collector is ``ru_maxrss`` from ``os.wait4`` on that child alone; the peer
   agent's is ``VmHWM`` of ``/proc/PID/status`` after the runs. Target: collector < 100 MB.

Not a test (it takes minutes): run it by hand.

Run:  .venv/bin/python bench/collect_memory.py [--gb 1.0] [--work DIR] [--keep]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from hasync.demo import write_pair

# The agent process is the tests' (tests/pairlib.py): one way to run an agent and wait for it.
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
from pairlib import AgentProc

ROTATE_BYTES = 20 << 20
LINES_PER_S = 50
TARGET_RSS_MB = 100
COMPONENTS = ("agent", "standby", "active", "check", "keeper", "apply", "watch")
MESSAGES = (
    "file applied dir=conf path=jobs/job-{n}/flink-conf.yaml size={s} digest=9f{n:x}a1c0",
    "change queued dir=udf path=lib/udf-{n}.jar seq={n}",
    "check verdict in_sync=true lag_s=0.0{s} out_of_sync=0 duration_ms={s}",
    "reconcile done files={s} bytes={n} deleted=0",
    "peer request path=/v1/changes since={n} wait=30 status=200",
    "backup set kept name=FlinkServer_2026{n:010d} files={s}",
)
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/opt/hasync/replication/apply.py", line 311, in write\n'
    "    os.replace(tmp, target)\n"
    "OSError: [Errno 28] No space left on device\n"
)


def generate(log_dir: Path, total_bytes: int, seed: int = 45641) -> tuple[datetime, datetime]:
    """Write the rotated set; return the time of its first and last entry."""
    rng = random.Random(seed)
    log_dir.mkdir(parents=True, exist_ok=True)
    t = datetime.now().replace(microsecond=0) - timedelta(days=30)
    first = t
    header = f"# hasync HA run log; times are local, UTC offset {t.astimezone():%z}\n"
    header = header[:-3] + ":" + header[-3:]
    written = 0
    n = 0
    files = 0
    while written < total_bytes:
        buf: list[str] = [header]
        size = len(header)
        while size < ROTATE_BYTES and written + size < total_bytes:
            stamp = t.strftime("%Y-%m-%d %H:%M:%S")
            for k in range(LINES_PER_S):
                level = "ERROR" if n % 997 == 0 else ("WARN" if n % 101 == 0 else "INFO")
                msg = MESSAGES[n % len(MESSAGES)].format(n=n, s=rng.randrange(1, 99999))
                line = f"{stamp},{k * 1000 // LINES_PER_S:03d} {level} [{COMPONENTS[n % 7]}] {msg}\n"
                if n % 1000 == 0:
                    line += TRACEBACK
                buf.append(line)
                size += len(line)
                n += 1
            t += timedelta(seconds=1)
        data = "".join(buf).encode()
        written += len(data)
        last = t - timedelta(seconds=1)
        if written < total_bytes:
            name = log_dir / f"ha.log.{t:%Y-%m-%d_%H-%M-%S}.gz"
            name.write_bytes(gzip.compress(data, compresslevel=1))
        else:
            (log_dir / "ha.log").write_bytes(data)
        files += 1
        print(f"\r  generated {written / 1e6:7.0f} MB in {files} files", end="", flush=True)
    print()
    return first.astimezone(), last.astimezone()


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(config: Path, args: list[str], cwd: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    # fork + exec and wait4 on that pid: the rusage is the collector's alone, not all children's.
    pid = os.fork()
    if pid == 0:
        os.chdir(cwd)
        out = os.open(cwd / "collect.out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        errfd = os.open(cwd / "collect.err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, 1)
        os.dup2(errfd, 2)
        os.execv(sys.executable, [sys.executable, "-m", "hasync", "collect", "-c", str(config), "--json", *args])
    _, status, usage = os.wait4(pid, 0)
    wall = time.monotonic() - t0
    rc = os.waitstatus_to_exitcode(status)
    stdout = (cwd / "collect.out").read_text()
    stderr = (cwd / "collect.err").read_text()
    if rc != 0:
        raise SystemExit(f"collect exited {rc}: {stderr}")
    doc = json.loads(stdout)
    m = doc["manifest"]
    bundle = Path(doc["bundle"])
    result = {
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "bundle_mb": round(bundle.stat().st_size / 1e6, 1),
        "content_mb": round(sum(f["size"] for f in m["files"]) / 1e6, 1),
        "dropped_lines": m["size_guard"]["dropped_lines"],
        "nodes": {
            n["name"]: {
                "entries": n.get("log", {}).get("entries"),
                "files_read": len(n.get("log", {}).get("files_read") or []),
                "files_skipped": len(n.get("log", {}).get("files_skipped") or []),
            }
            for n in m["nodes"]
        },
        "warnings": stderr.strip().splitlines(),
    }
    bundle.unlink()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0, help="uncompressed size of the log set (default 1.0)")
    ap.add_argument("--work", type=Path, help="work dir; the log set in it is reused (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args()
    work = (args.work or Path(tempfile.mkdtemp(prefix="hasync-bench-collect-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    logs = work / f"logs-{args.gb:g}gb"
    meta = logs / "bench.json"
    if meta.exists():
        span = json.loads(meta.read_text())
        first, last = datetime.fromisoformat(span["first"]), datetime.fromisoformat(span["last"])
        print(f"reusing the log set in {logs}")
    else:
        shutil.rmtree(logs, ignore_errors=True)
        print(f"generating {args.gb:g} GB of HA log in {logs}")
        first, last = generate(logs, int(args.gb * 1e9))
        meta.write_text(json.dumps({"first": first.isoformat(), "last": last.isoformat()}))
    gz = sorted(logs.glob("ha.log.*.gz"))
    print(f"  {len(gz)} rotated files, {sum(p.stat().st_size for p in gz) / 1e6:.0f} MB compressed, {first} .. {last}")

    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    pair = write_pair(run)
    (run / "logs").mkdir()
    (run / "logs" / "node-b").symlink_to(logs)
    (run / "logs" / "node-a").symlink_to(logs)
    token = (run / "secrets" / "pair.token").read_text().strip()
    agent = AgentProc(pair.config_a, pair.port_a, token)  # its output: run/node-a.out
    results: dict[str, Any] = {}
    try:
        agent.start()  # returns once it answers /healthz
        assert agent.proc is not None
        span = last - first
        mid = first + span / 2
        cases = {
            "wide": ["--at", mid.isoformat(), "--before", f"{span.total_seconds() * 0.2:.0f}s",
                     "--after", f"{span.total_seconds() * 0.2:.0f}s"],
            "alarm": ["--at", mid.isoformat()],
        }  # fmt: skip
        for name, cargs in cases.items():
            print(f"collect {name}: {' '.join(cargs)}")
            results[name] = r = measure(pair.config_b, cargs, run)
            print(
                f"  wall {r['wall_s']} s, cpu {r['cpu_s']} s, collector peak RSS {r['peak_rss_mb']} MB, "
                f"bundle {r['bundle_mb']} MB ({r['content_mb']} MB content), dropped lines {r['dropped_lines']}"
            )
            for node, n in r["nodes"].items():
                print(f"    {node}: {n['entries']} entries, {n['files_read']} files read, {n['files_skipped']} skipped")
        results["peer_agent_peak_rss_mb"] = round(vm_hwm_mb(agent.proc.pid), 1)
    finally:
        agent.stop(timeout=10)
    peak = max(r["peak_rss_mb"] for k, r in results.items() if isinstance(r, dict))
    print(f"peer agent peak RSS (VmHWM) {results['peer_agent_peak_rss_mb']} MB")
    verdict = "OK" if peak < TARGET_RSS_MB else "OVER TARGET"
    print(f"collector peak RSS {peak} MB (target < {TARGET_RSS_MB} MB): {verdict}")
    if not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if peak < TARGET_RSS_MB else 1)


if __name__ == "__main__":
    main()
