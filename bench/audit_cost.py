"""Cost of the audit (hasync.audit): one full pass of the 100,000-file tree, at the default rate and unthrottled.

The generated tree of `replication.py` (1000 folders x 100 files of 512 B to 8 KiB, reused from
`--work`) is scanned once into an active side's tree, as the agent does at start; then the
audit's real pass runs in this process: at `[audit] rate_mb_s` (default 10 MB/s), then
unthrottled (what `hasync check --deep` runs). Printed: wall time, MB read per second, and the
CPU time of the process (all threads) as a share of one core.

Run:  .venv/bin/python bench/audit_cost.py [--quick] [--rate MB_S] [--work DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.* (a sibling bench script)

from bench.replication import MANY_FULL, MANY_QUICK, ensure_tree

from hasync.audit import Auditor
from hasync.config import AuditSection, load
from hasync.demo import write_pair
from hasync.replication.active import ActiveSide


async def one_pass(auditor: Auditor, rate: float | None) -> tuple[float, float, int, int, int]:
    c0, t0 = time.process_time(), time.monotonic()
    found = await auditor.run_pass(rate)
    return time.monotonic() - t0, time.process_time() - c0, auditor.files, auditor.bytes, len(found)


async def run(args: argparse.Namespace) -> int:
    tree = ensure_tree(
        args.work / "trees", "many-quick" if args.quick else "many", MANY_QUICK if args.quick else MANY_FULL, args.seed
    )
    base = Path(tempfile.mkdtemp(prefix="audit-cost-", dir=args.work))
    pair = write_pair(base, dirs=("many",))
    link = pair.data_a / "many"
    link.rmdir()
    link.symlink_to(tree.path)
    cfg = load(pair.config_a)
    side = ActiveSide(cfg)
    t0 = time.monotonic()
    side.trees["many"] = await asyncio.to_thread(side._scan_dir, cfg.sync.dirs[0], None)
    scanned = time.monotonic() - t0
    print(f"audit cost: {tree.files} files, {tree.bytes / 1e6:.0f} MB (scanned into the tree in {scanned:.1f} s)")
    auditor = Auditor(side, AuditSection(rate_mb_s=args.rate), "bench")
    print(f"{'pass':<22}{'wall s':>9}{'MB/s read':>11}{'CPU s':>8}{'CPU % of a core':>17}{'findings':>10}")
    for label, rate in (
        (f"at {args.rate:g} MB/s (default)" if args.rate == 10 else f"at {args.rate:g} MB/s", args.rate),
        ("unthrottled (--deep)", None),
    ):
        wall, cpu, files, nbytes, found = await one_pass(auditor, rate)
        assert files == tree.files, (files, tree.files)
        print(f"{label:<22}{wall:>9.1f}{nbytes / 1e6 / wall:>11.1f}{cpu:>8.1f}{100 * cpu / wall:>17.1f}{found:>10}")
    cost = sum(max(s, 4096) for s in (p.stat().st_size for p in tree.path.rglob("*.dat")))
    print(f"(a pass at the rate limit is charged {cost / 1e6:.0f} MB: each file at least 4 KiB)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10,000 files instead of 100,000")
    ap.add_argument("--rate", type=float, default=10.0, help="MB/s of the throttled pass (default 10, the default)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/hasync-bench"))
    ap.add_argument("--seed", type=int, default=45641)
    return asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
