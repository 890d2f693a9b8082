"""`hasync sync --once` while the active agent is still scanning at start: it waits, saying so."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys

from pairlib import PairEnv, wait_for


def test_sync_once_waits_for_a_starting_active(make_pair) -> None:  # type: ignore[no-untyped-def]
    """The active's initial scan is held (this process holds a write lease on one of its files, so the
    scan's open() waits): the active answers 503 starting. `sync --once` on the standby waits with a
    progress line instead of failing, and syncs once the scan is done."""
    env: PairEnv = make_pair()
    (env.src / "conf" / "a.yaml").write_text("a: 1\n")
    held = env.src / "conf" / "held.yaml"
    held.write_text("held: 1\n")
    fd = os.open(held, os.O_RDONLY)
    try:
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)  # the lease break signals SIGURG (ignored), not SIGIO
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        env.a.start()
        proc = subprocess.Popen(
            [sys.executable, "-m", "hasync", "sync", "--once", "--json", "-c", str(env.pair.config_b)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=env.pair.base,
        )
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "waiting for node-a" in line and "starting" in line, line
    finally:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        os.close(fd)
    out, err = proc.communicate(timeout=60)
    doc = json.loads(out)
    assert proc.returncode == 0 and doc["in_sync"] is True, (out, err)
    wait_for(env.in_sync, 10, what="the standby's copy")
