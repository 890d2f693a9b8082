"""The replication benchmark still runs on the shared pair harness (pairlib): one quick item, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "replication.py"


def test_the_quick_propagation_item_runs_and_reports(base: Path) -> None:
    out = base / "replication.json"
    args = ["--quick", "--only", "3", "--no-lsyncd", "--changes", "3", "--work", str(base / "work"), "--out", str(out)]
    r = subprocess.run(
        [sys.executable, str(BENCH), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(out.read_text())
    hasync = doc["propagation"]["hasync"]
    assert hasync["changes"] == 3 and hasync["not_seen_within_10s"] == 0, hasync
    assert len(hasync["delays_ms"]) == 3 and all(d > 0 for d in hasync["delays_ms"])
    assert "(3) one-file change propagation, 3 changes" in r.stdout
    assert doc["meta"]["active_scan_s"]["ref"] > 0
